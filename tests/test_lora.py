"""Federated LoRA: adapters on a frozen base held once (jaxqfl.lora).

Properties, each against an independent reference:

* FedIT (Zhang et al. 2024; LoRA, Hu et al. 2021) on a linear model with
  rank = layer width and alpha = r: two engine rounds equal a NumPy reference
  that trains A and B by hand-derived gradients of y = x (W0 + (alpha/r) A B)
  and averages A and B separately (the reference never calls jaxqfl).
* Only the adapters travel: uplink bits are 32 x the adapter parameter count
  per client without a codec, and the 8-bit uniform codec's count (8 bits per
  value plus two float32 per leaf) with one.
* The base is never copied per client: the compiled round's temporary memory
  grows with the chunk of vmapped clients by far less than one base copy per
  client, while full fine-tuning of the same model grows by at least that.
* The adapted forward equals base + (alpha/r) (x A) B for Dense and
  DenseGeneral (attention-shaped) kernels, starts equal to the base (B = 0),
  and bad arguments are refused naming the value.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, compress, engine, lora, models
from jaxqfl.data.population import Population
from jaxqfl.engine.schedule import LocalSchedule

C, N, D, K = 4, 8, 6, 3  # clients, examples each, features, classes


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(K, use_bias=False)(x)


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (C * N, D)).astype(np.float32)
    y = rng.integers(0, K, C * N).astype(np.int32)
    return Population(x, y, np.arange(C, dtype=np.int32) * N, np.full(C, N, np.int32), x[:8].copy(), y[:8].copy(), K)


def _linear_lora(rank, alpha):
    model = models.from_flax(Linear())
    base = model.init(jax.random.key(7), jnp.zeros((1, D)))
    return base, lora.adapt(model, base, rank=rank, alpha=alpha)


def _numpy_local(w0, a, b, pop, c, *, scale, lr, steps, rank):
    """Client c's full-batch SGD on mean cross-entropy of its rows, gradients by hand; HetLoRA's block when
    ``rank`` < r: it starts from the truncated pair and trains only the leading block."""
    r = a.shape[1]
    x = pop.x[c * N:(c + 1) * N].astype(np.float64)
    onehot = np.eye(K)[pop.y[c * N:(c + 1) * N]]
    keep_a, keep_b = (np.arange(r) < rank)[None, :], (np.arange(r) < rank)[:, None]
    ai, bi = a * keep_a, b * keep_b
    for _ in range(steps):
        logits = x @ (w0 + scale * ai @ bi)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / N  # d(mean CE)/d logits
        da = scale * x.T @ (g @ bi.T) * keep_a
        db = scale * (x @ ai).T @ g * keep_b
        ai, bi = ai - lr * da, bi - lr * db
    return ai, bi, a * keep_a, b * keep_b


def _numpy_fedit(w0, a, b, pop, *, scale, lr, steps, rounds, ranks=None):
    """FedAvg of A and B separately (FedIT); ``ranks`` (HetLoRA): client c trains A[:, :r_c] and B[:r_c, :]
    only, from the truncated global adapters, and uploads the change of that block zero-padded; the server
    adds the mean upload."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    ranks = [a.shape[1]] * C if ranks is None else ranks
    for _ in range(rounds):
        da_sum, db_sum = np.zeros_like(a), np.zeros_like(b)
        for c in range(C):
            ai, bi, a_start, b_start = _numpy_local(w0, a, b, pop, c, scale=scale, lr=lr, steps=steps, rank=ranks[c])
            da_sum += ai - a_start
            db_sum += bi - b_start
        a, b = a + da_sum / C, b + db_sum / C  # equal client sizes: the weighted mean is the mean
    return a, b


def test_fedit_rounds_equal_a_numpy_reference_of_averaging_a_and_b(population):
    rank = K  # the layer's width
    base, model = _linear_lora(rank, float(rank))
    lr, steps = 0.5, 2
    sim = engine.build(population, model, algorithms.fedavg(optax.sgd(lr)),
                       LocalSchedule(local_epochs=steps, batch_size=N), cohort_size=C, chunk_size=2, autotune=False)
    s0 = sim.init(0)
    start = jax.device_get(s0.params)
    s2, _ = sim.run_block(s0, 2)
    got = jax.device_get(s2.params)["Dense_0"]["kernel"]
    a0, b0 = start["Dense_0"]["kernel"]["a"], start["Dense_0"]["kernel"]["b"]
    assert a0.shape == (D, rank) and b0.shape == (rank, K) and not np.any(b0)
    a, b = _numpy_fedit(np.asarray(base["Dense_0"]["kernel"], np.float64), a0, b0, population, scale=1.0, lr=lr,
                        steps=steps, rounds=2)
    np.testing.assert_allclose(got["a"], a, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got["b"], b, rtol=2e-5, atol=2e-6)
    assert np.abs(got["b"]).max() > 1e-3  # it trained
    # the averaged product is not the product of the averages (FedIT's stated bias): what FedIT changes
    assert set(s2.params) == {"Dense_0"} and set(s2.params["Dense_0"]["kernel"]) == {"a", "b"}


def test_only_the_adapters_are_uploaded(population):
    base, model = _linear_lora(2, 4.0)
    adapter_count = D * 2 + 2 * K
    for uplink, want in ((None, 32 * adapter_count), (compress.uniform(8), 8 * adapter_count + 2 * 2 * 32)):
        sim = engine.build(population, model, algorithms.fedavg(optax.sgd(0.1)), LocalSchedule(local_steps=1),
                           cohort_size=C, chunk_size=C, uplink=uplink, autotune=False)
        _, metrics = sim.run_block(sim.init(0), 1)
        np.testing.assert_array_equal(np.asarray(metrics.uplink_bits), want)


class Wide(nn.Module):
    width: int = 768

    @nn.compact
    def __call__(self, x):
        return nn.Dense(K)(nn.relu(nn.Dense(self.width, use_bias=False)(x)))


def _round_temp_bytes(model, pop, chunk):
    """Temporary bytes of the compiled round (one device, ``chunk`` clients vmapped)."""
    from jaxqfl.bench.round_memory import round_memory

    return round_memory(pop, model, algorithms.fedavg(optax.sgd(0.1)), LocalSchedule(local_steps=1, batch_size=4),
                        chunk)["temporaries"]


def test_the_base_is_held_once_not_per_client():
    width, d = 768, 256
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (16 * 4, d)).astype(np.float32)
    y = rng.integers(0, K, 16 * 4).astype(np.int32)
    pop = Population(x, y, np.arange(16, dtype=np.int32) * 4, np.full(16, 4, np.int32), x[:4].copy(), y[:4].copy(), K)
    float_model = models.from_flax(Wide(width))
    base = float_model.init(jax.random.key(0), jnp.zeros((1, d)))
    base_bytes = 4 * d * width  # the adapted kernel alone: 786 KB
    lora_model = lora.adapt(float_model, base, rank=2, targets=r"Dense_0/kernel$")
    lora_growth = _round_temp_bytes(lora_model, pop, 8) - _round_temp_bytes(lora_model, pop, 1)
    full_growth = _round_temp_bytes(float_model, pop, 8) - _round_temp_bytes(float_model, pop, 1)
    assert full_growth >= 7 * base_bytes  # full fine-tuning: a trained copy per vmapped client
    assert lora_growth < 0.5 * base_bytes, (lora_growth, base_bytes)  # LoRA: adapters and activations only


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):  # x [B, T, D]
        q = nn.DenseGeneral((2, 4), name="query")(x)  # kernel [D, 2, 4]
        o = nn.DenseGeneral(D, axis=(-2, -1), name="out")(jnp.tanh(q))  # kernel [2, 4, D]
        return o.mean(1)


def test_adapted_forward_equals_base_plus_low_rank_terms():
    model = models.from_flax(Attention())
    x = jax.random.normal(jax.random.key(0), (3, 5, D))
    base = model.init(jax.random.key(1), x)
    adapted = lora.adapt(model, base, rank=2, alpha=3.0)
    adapters = adapted.init(jax.random.key(2), x)
    np.testing.assert_allclose(adapted.apply(adapters, x), model.apply(base, x), rtol=1e-6, atol=1e-6)  # B = 0
    adapters = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(3), a.shape), adapters)
    s = 3.0 / 2
    qa, qb = (np.asarray(adapters["query"]["kernel"][n], np.float64) for n in "ab")
    oa, ob = (np.asarray(adapters["out"]["kernel"][n], np.float64) for n in "ab")
    assert qa.shape == (D, 2) and qb.shape == (2, 8) and oa.shape == (8, 2) and ob.shape == (2, D)
    xn = np.asarray(x, np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), base)
    q = xn @ p["query"]["kernel"].reshape(D, 8) + s * (xn @ qa) @ qb + p["query"]["bias"].reshape(8)
    h = np.tanh(q)
    o = h @ p["out"]["kernel"].reshape(8, D) + s * (h @ oa) @ ob + p["out"]["bias"]
    np.testing.assert_allclose(adapted.apply(adapters, x), o.mean(1), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_refused_naming_them():
    model = models.from_flax(Linear())
    base = model.init(jax.random.key(0), jnp.zeros((1, D)))
    for kwargs, needle in (({"rank": 0}, "rank"), ({"rank": 2, "alpha": -1.0}, "alpha"),
                           ({"rank": 2, "targets": "("}, "targets"), ({"rank": 2, "targets": "nothing$"}, "match no"),
                           ({"rank": 2, "base_quant_format": "fp3"}, "fp3")):
        with pytest.raises(ValueError, match=needle):
            lora.adapt(model, base, **kwargs)
    lstm = models.char_lstm(embed_dim=4, hidden=8, layers=1)  # Flax's fused cell concatenates its kernels
    x = jnp.zeros((1, 6))
    adapted = lora.adapt(lstm, lstm.init(jax.random.key(0), x), rank=2)
    with pytest.raises(ValueError, match="hf/kernel is concatenated with"):
        adapted.init(jax.random.key(1), x)
    # NumPy scalars are numbers too (Experiment takes them): the same model as Python's 2 and 4.0
    same = lora.adapt(model, base, rank=np.int64(2), alpha=np.float32(4.0))
    want = lora.adapt(model, base, rank=2, alpha=4.0)
    sample = jnp.ones((1, D))
    adapters = jax.tree.map(lambda a: a + 0.1, want.init(jax.random.key(3), sample))
    np.testing.assert_array_equal(same.apply(adapters, sample), want.apply(adapters, sample))


@pytest.mark.parametrize("ranks", [(1, 3, 2, 3), (3, 3, 3, 3)])
def test_heterogeneous_ranks_equal_a_numpy_reference_of_zero_padded_blocks(population, ranks):
    """HetLoRA: client c trains the leading ranks[c] block; all at full rank is plain FedIT, bit for bit."""
    rank = 3
    base, model = _linear_lora(rank, 2.0)
    lr, steps, schedule = 0.5, 2, LocalSchedule(local_epochs=2, batch_size=N)
    fedavg = algorithms.fedavg(optax.sgd(lr))
    het = lora.heterogeneous_ranks(fedavg, np.asarray(ranks))
    sim = engine.build(population, model, het, schedule, cohort_size=C, chunk_size=2, autotune=False)
    s0 = sim.init(0)
    start = jax.device_get(s0.params)["Dense_0"]["kernel"]
    got = jax.device_get(sim.run_block(s0, 2)[0].params)["Dense_0"]["kernel"]
    a, b = _numpy_fedit(np.asarray(base["Dense_0"]["kernel"], np.float64), start["a"], start["b"], population,
                        scale=2.0 / rank, lr=lr, steps=steps, rounds=2, ranks=list(ranks))
    np.testing.assert_allclose(got["a"], a, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got["b"], b, rtol=2e-5, atol=2e-6)
    if min(ranks) == rank:  # every client at full rank: exactly homogeneous LoRA
        plain = engine.build(population, model, fedavg, schedule, cohort_size=C, chunk_size=2, autotune=False)
        want = jax.device_get(plain.run_block(plain.init(0), 2)[0].params)["Dense_0"]["kernel"]
        for n in "ab":
            np.testing.assert_array_equal(got[n], want[n])


def test_a_low_rank_client_changes_only_its_leading_block(population):
    base, model = _linear_lora(3, 3.0)
    het = lora.heterogeneous_ranks(algorithms.fedavg(optax.sgd(0.5)), np.full(C, 1))
    sim = engine.build(population, model, het, LocalSchedule(local_steps=3, batch_size=N), cohort_size=C,
                       chunk_size=C, autotune=False)
    s0 = sim.init(0)
    start = jax.device_get(s0.params)["Dense_0"]["kernel"]
    got = jax.device_get(sim.run_block(s0, 2)[0].params)["Dense_0"]["kernel"]
    np.testing.assert_array_equal(got["a"][:, 1:], start["a"][:, 1:])
    np.testing.assert_array_equal(got["b"][1:], 0.0)
    assert np.abs(got["b"][0]).max() > 1e-3 and np.abs(got["a"][:, 0] - start["a"][:, 0]).max() > 1e-4
    with pytest.raises(ValueError, match="tier ranks"):
        lora.rank_tiers(C, [4, 2], 3)


def test_merged_params_serve_the_original_model_and_pretrained_params_load(tmp_path):
    from jaxqfl.models import pretrained
    from jaxqfl.models.serialization import save_params

    model = models.from_flax(Attention())
    x = jax.random.normal(jax.random.key(0), (3, 5, D))
    base = model.init(jax.random.key(1), x)
    save_params(tmp_path / "base.msgpack", {"params": base})  # a Flax variables dict, as training scripts write
    loaded = pretrained.load_pretrained(tmp_path / "base.msgpack", model, x)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(base)):
        np.testing.assert_array_equal(a, b)
    adapted = lora.adapt(model, loaded, rank=2, alpha=3.0)
    adapters = jax.tree.map(lambda a: a + 0.05, adapted.init(jax.random.key(2), x))
    merged = lora.merge(adapted, adapters, x)
    np.testing.assert_allclose(model.apply(merged, x), adapted.apply(adapters, x), rtol=1e-5, atol=1e-5)
    wrong = models.from_flax(Linear())
    with pytest.raises(ValueError, match="do not fit the model"):
        pretrained.load_pretrained(tmp_path / "base.msgpack", wrong, jnp.zeros((1, D)))
    with pytest.raises(FileNotFoundError, match="nope"):
        pretrained.load_pretrained(tmp_path / "nope.msgpack", model, x)


def test_qlora_forward_is_the_dequantized_base_plus_the_adapters():
    from jaxqfl.lora import base_quant

    model = models.from_flax(Linear())
    x = jax.random.normal(jax.random.key(0), (5, D))
    base = model.init(jax.random.key(1), x)
    adapted = lora.adapt(model, base, rank=2, alpha=2.0, base_quant_format="nf4")
    adapters = jax.tree.map(lambda a: a + 0.1, adapted.init(jax.random.key(2), x))
    w = np.asarray(base_quant.dequantize_base(adapted.frozen)["Dense_0"]["kernel"], np.float64)
    assert 0 < np.abs(w - np.asarray(base["Dense_0"]["kernel"])).max() < 0.2  # NF4, not the float kernel
    ab = adapters["Dense_0"]["kernel"]
    want = np.asarray(x, np.float64) @ (w + np.asarray(ab["a"], np.float64) @ np.asarray(ab["b"], np.float64))
    np.testing.assert_allclose(adapted.apply(adapters, x), want, rtol=1e-5, atol=1e-5)


def test_product_averaging_is_exact_where_fedit_is_biased(population):
    """Rank r = min(d_in, d_out): the rank-r SVD of the mean product is the mean product itself, so the
    round's low-rank term equals the mean of the clients' terms (NumPy reference, two rounds); FedIT's
    mean(A) mean(B) differs from it."""
    rank = K
    base, model = _linear_lora(rank, float(rank))
    lr, steps = 0.5, 2
    algorithm = lora.product_average(algorithms.fedavg(optax.sgd(lr)))
    sim = engine.build(population, model, algorithm, LocalSchedule(local_epochs=steps, batch_size=N),
                       cohort_size=C, chunk_size=2, aggregator=lora.stacked(), autotune=False)
    s0 = sim.init(0)
    ab = jax.device_get(s0.params)["Dense_0"]["kernel"]
    a, b = np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64)
    w0 = np.asarray(base["Dense_0"]["kernel"], np.float64)
    s2 = sim.run_block(s0, 2)[0]
    for round_index in range(2):
        clients = [_numpy_local(w0, a, b, population, c, scale=1.0, lr=lr, steps=steps, rank=rank)[:2]
                   for c in range(C)]
        mean_product = np.mean([ai @ bi for ai, bi in clients], axis=0)
        if round_index == 0:  # FedIT's term is biased away from the mean of the clients' terms
            fedit = np.mean([ai for ai, _ in clients], 0) @ np.mean([bi for _, bi in clients], 0)
            assert np.abs(fedit - mean_product).max() > 1e-4
        u, sv, vt = np.linalg.svd(mean_product, full_matrices=False)
        a, b = u * np.sqrt(sv), np.sqrt(sv)[:, None] * vt
        np.testing.assert_allclose(a @ b, mean_product, rtol=1e-10, atol=1e-12)
    got = jax.device_get(s2.params)["Dense_0"]["kernel"]
    np.testing.assert_allclose(np.asarray(got["a"], np.float64) @ np.asarray(got["b"], np.float64), a @ b,
                               rtol=2e-4, atol=2e-5)


def test_an_orbax_checkpoint_of_params_or_a_training_state_loads(tmp_path):
    import orbax.checkpoint as ocp

    from jaxqfl.models import pretrained

    model = models.from_flax(Linear())
    x = jnp.zeros((1, D))
    params = model.init(jax.random.key(3), x)
    for name, tree in (("params", params), ("state", {"params": params, "step": 7})):
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(tmp_path / name, tree)
        ckpt.wait_until_finished()
        loaded = pretrained.load_pretrained(tmp_path / name, model, x)
        np.testing.assert_array_equal(loaded["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="neither a jaxqfl run folder"):
        pretrained.load_pretrained(tmp_path / "junk", model, x)


class _Widths(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(12)(x)))  # kernels 6 x 12 and 12 x 3


@pytest.mark.parametrize("rank", [1, 2, 3, 5, 6, 7, 12])
def test_full_rank_kernels_are_those_whose_smaller_side_is_at_most_the_rank(rank):
    """A kernel's adapter A B can reach every update of it exactly when r >= min(d_in, d_out); the listing is
    checked against the kernels' own shapes in the base params, not the adapters'."""
    model = models.from_flax(_Widths())
    base = model.init(jax.random.key(0), jnp.zeros((1, D)))
    adapted = lora.adapt(model, base, rank=rank)
    shapes = {f"{layer}/kernel": base[layer]["kernel"].shape for layer in base}
    expected = {p: s for p, s in shapes.items() if rank >= min(s)}
    adapters = adapted.init(jax.random.key(1), jnp.zeros((1, D)))
    assert lora.full_rank_kernels(adapters) == expected
    assert lora.full_rank_kernels(jax.eval_shape(adapted.init, jax.random.key(1), jnp.zeros((1, D)))) == expected
    for path in expected:  # such an adapter holds more numbers than its kernel
        d_in, d_out = shapes[path]
        assert rank * (d_in + d_out) > d_in * d_out
