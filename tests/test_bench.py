"""jaxqfl.bench: analytic cost counts, the chunk cost model, the loop reference, the command line."""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.bench import cost, report, runner
from jaxqfl.cli.bench_command import add_arguments, validate
from jaxqfl.bench.machine import Peaks
from jaxqfl.bench.reference import per_client_loop
from jaxqfl.bench.workloads import Workload, random_population
from jaxqfl.engine import chunking


def test_mlp_forward_flops_are_two_macs_per_weight():
    model = models.mlp(hidden=(200,), num_outputs=62)
    assert cost.forward_flops_per_example(model, (784,)) == 2 * (784 * 200 + 200 * 62)


def test_cnn_forward_flops_count_both_convolutions_and_both_dense_layers():
    model = models.cnn(10)
    conv1 = 28 * 28 * 32 * (5 * 5 * 1)
    conv2 = 14 * 14 * 64 * (5 * 5 * 32)
    dense = 7 * 7 * 64 * 512 + 512 * 10
    assert cost.forward_flops_per_example(model, (28, 28)) == 2 * (conv1 + conv2 + dense)


def test_scan_multiplies_its_body_and_cond_takes_the_larger_branch():
    def f(w, x):
        def body(c, _):
            return c @ w, None

        y, _ = jax.lax.scan(body, x, None, length=7)
        return jax.lax.cond(True, lambda y: y @ w @ w, lambda y: y, y)

    w, x = jnp.ones((4, 4)), jnp.ones((3, 4))
    assert cost.matmul_flops(f, w, x) == (7 + 2) * 2 * 3 * 4 * 4


def test_round_cost_follows_the_documented_formulas():
    pop = random_population(20, 12, 5, 3)
    model = models.mlp(hidden=(4,), num_outputs=3)
    alg = algorithms.fedavg(optax.sgd(0.1, momentum=0.9))
    sched = engine.LocalSchedule(local_epochs=2, batch_size=5)  # 12 examples -> ceil(24 / 5) = 5 steps
    c = cost.round_cost(pop, model, alg, sched, cohort_size=6)
    P = 5 * 4 + 4 + 4 * 3 + 3
    assert (c.num_params, c.optimizer_floats, c.client_steps) == (P, P, 6 * 5)
    assert c.flops == 3 * 2 * (5 * 4 + 4 * 3) * 5 * 5 * 6
    assert c.bytes == 6 * 5 * (4 * (2 * P + 2 * P + 2 * P) + 5 * (4 * 5 + 4))
    t, term = c.floor_seconds(peak_flops=1e9, peak_bandwidth=1e12)
    assert (t, term) == (c.flops / 1e9, "flops")


def test_chunk_model_keeps_small_clients_in_l2_and_large_ones_in_a_share_of_l3():
    l2, l3 = chunking.cpu_caches()
    small = chunking.client_working_set(610, 10, 60)
    chunk = chunking.auto_chunk_size(10_000, 610, 10, 60, "cpu", num_devices=2)
    assert chunk * small <= l2 < (chunk + 1) * small * 2  # the widest (balanced) chunk in L2
    large = chunking.client_working_set(169_462, 16, 784)
    chunk = chunking.auto_chunk_size(10_000, 169_462, 16, 784, "cpu", num_devices=2)
    assert 1 <= chunk and chunk * large <= l3 // 2 // 4
    assert chunking.auto_chunk_size(3, 169_462, 16, 784, "cpu") <= 3
    assert chunking.auto_chunk_size(5000, 169_462, 16, 784, "gpu", device_memory=2**40) == 5000


@pytest.mark.parametrize("per_device,target", [(50, 6), (100, 7), (17, 5), (8, 100)])
def test_balanced_chunks_pad_less_than_one_chunk(per_device, target):
    chunk = chunking._balanced(per_device, target)
    padded, n = chunking.padded_layout(per_device, 1, chunk)
    assert chunk <= max(target, 1) and padded - per_device < n


@pytest.mark.slow
def test_loop_reference_computes_the_engines_round():
    """The bench's two contestants agree: same cohort, same batches, same update."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 15, size=12)
    from jaxqfl.data.population import from_client_indices

    x = rng.normal(size=(int(sizes.sum()), 5)).astype(np.float32)
    y = rng.integers(0, 3, size=x.shape[0]).astype(np.int32)
    bounds = np.cumsum([0, *sizes])
    pop = from_client_indices(x, y, [np.arange(bounds[i], bounds[i + 1]) for i in range(12)], x[:9], y[:9], 3)
    w = Workload("t", "test", pop, models.mlp(hidden=(6,), num_outputs=3), algorithms.fedavg(optax.sgd(0.3)),
                 engine.LocalSchedule(local_epochs=1, batch_size=4), 5)
    result = runner.bench_workload(w, Peaks(1e11, 1e10), rounds=1, num_devices=2, chunk_size=2)
    assert result["max_abs_diff_vs_loop"] < 1e-6
    assert result["num_devices"] == 2 and result["chunk_size"] == 2
    assert result["speedup_over_loop"] > 0 and result["over_floor"] > 0
    assert "| t |" in report.markdown_table([result])

    ref = per_client_loop(pop, w.model, w.algorithm, w.schedule, cohort_size=5)
    sim = engine.build(pop, w.model, w.algorithm, w.schedule, cohort_size=5, num_devices=1)
    state, metrics = sim.run_block(sim.init(3), 2)
    loop_state = ref.init(3)
    for r in range(2):
        loop_state, loss = ref.run_round(loop_state)
        np.testing.assert_allclose(float(loss), float(metrics.train_loss[r]), atol=1e-6)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(loop_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_cli_refuses_unknown_workloads_and_missing_mnist(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--workloads", "mlp,huge"])
    args = parser.parse_args(["--workloads", "cnn", "--mnist-path", str(tmp_path / "missing.npz")])
    with pytest.raises(SystemExit):
        validate(parser, args)
    args = parser.parse_args(["--workloads", "tiny,mlp,tiny", "--chunk-size", "4"])
    validate(parser, args)
    assert args.workloads == ["tiny", "mlp"] and args.chunk_size == 4


def test_cli_refuses_what_would_fail_after_the_benchmark_ran(tmp_path, capsys):
    """A folder in --name, a file as --out, results already in OUT, a negative seed: each refused before any
    work (each ended in a traceback once the whole benchmark had run, or overwrote the last results)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    afile = tmp_path / "afile"
    afile.write_text("x")
    done = tmp_path / "done"
    done.mkdir()
    (done / "bench.md").write_text("earlier results")
    cases = [(["--name", "a/b"], "--name 'a/b': a file name stem"), (["--name", ""], "--name '': a file name stem"),
             (["--out", str(afile)], "is a file; the results go into a folder"),
             (["--out", str(done)], "already holds bench.md; choose another --out or --name"),
             (["--autotune", "off", "--chunk-size", "4"], "--chunk-size 4 leaves none to choose")]  # was ignored
    for argv, message in cases:
        with pytest.raises(SystemExit):
            validate(parser, parser.parse_args(argv))
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--seed", "-1"])
    assert "expected a non-negative integer, got '-1'" in capsys.readouterr().err
    assert (done / "bench.md").read_text() == "earlier results"


def test_zoo_forward_flops_equal_the_layer_formulas():
    """Matmul/conv FLOPs of one example, counted from each layer's sizes (2 x multiply-adds)."""
    from jaxqfl.bench.cost import forward_flops_per_example

    T, V = 80, 256
    E, H = 8, 256  # char LSTM: gates 4H from the input and from the state, per layer; dense H -> V
    lstm = T * (2 * E * 4 * H + 2 * H * 4 * H + 2 * (H * 4 * H + H * 4 * H) + 2 * H * V)
    assert forward_flops_per_example(models.char_lstm(), (T,)) == lstm
    W = 64  # transformer block: q, k, v, out projections; scores and weighted values over T keys; MLP W-4W-W
    block = 4 * 2 * W * W + 2 * 2 * T * W + 2 * 2 * W * 4 * W
    assert forward_flops_per_example(models.transformer(width=W, depth=2, heads=4, context=T), (T,)) == T * (
        2 * block + 2 * W * V)

    def conv(hw, c_in, c_out):
        return 2 * hw * hw * c_out * c_in * 9

    resnet = (conv(32, 3, 16) + 6 * conv(32, 16, 16) + conv(16, 16, 32) + 5 * conv(16, 32, 32)
              + conv(8, 32, 64) + 5 * conv(8, 64, 64) + 2 * 64 * 10)
    assert forward_flops_per_example(models.resnet20(10), (32, 32, 3)) == resnet
