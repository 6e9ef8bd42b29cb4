"""Next-token task and the zoo models (ResNet-20, char LSTM, transformer) against independent references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl import models, tasks


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_next_token_loss_and_metrics_equal_numpy_reference_with_padding():
    rng = np.random.default_rng(0)
    B, T, V = 5, 7, 11
    z = rng.normal(size=(B, T, V)).astype(np.float32) * 2
    y = rng.integers(0, V, size=(B, T))
    y[1, 4:] = -1  # a short window
    y[3, 1:] = -1
    y[4, :] = -1  # all padding: contributes nothing
    y[0, 2] = int(np.argmax(z[0, 2]))  # one certain hit
    task = tasks.next_token()
    # reference, straight from the definition: -log softmax at the target, over non-padding tokens only
    lp = _log_softmax(z.astype(np.float64))
    per_example, total, count, hits = [], 0.0, 0, 0
    for b in range(B):
        terms = [-lp[b, t, y[b, t]] for t in range(T) if y[b, t] >= 0]
        per_example.append(np.mean(terms) if terms else 0.0)
        total += sum(terms)
        count += len(terms)
        hits += sum(int(np.argmax(z[b, t]) == y[b, t]) for t in range(T) if y[b, t] >= 0)
    got = np.asarray(task.loss(jnp.asarray(z), jnp.asarray(y)))
    np.testing.assert_allclose(got, per_example, rtol=1e-5, atol=1e-6)
    # evaluation: per-example sums, divided by n, then finish makes token means
    sums = {k: float(np.sum(v)) for k, v in task.metrics(jnp.asarray(z), jnp.asarray(y)).items()}
    report = task.finish(y)({k: v / B for k, v in sums.items()})
    mean = total / count
    assert report["loss"] == pytest.approx(mean, rel=1e-5)
    assert report["accuracy"] == pytest.approx(hits / count, rel=1e-6)
    assert report["perplexity"] == pytest.approx(math.exp(mean), rel=1e-5)
    assert report["bits_per_char"] == pytest.approx(mean / math.log(2), rel=1e-5)
    # the token mean is not the mean of the examples' means when windows are padded
    assert abs(mean - np.mean(per_example[:4])) > 1e-3


def test_resnet20_has_the_papers_layer_sizes():
    """He et al. 2016: 3x3 conv 16, then 3 stages x 3 blocks x 2 convs of 16/32/64 filters; option-A shortcuts."""
    convs = [3 * 16] + [16 * 16] * 6 + [16 * 32] + [32 * 32] * 5 + [32 * 64] + [64 * 64] * 5
    norms = [16] * 7 + [32] * 6 + [64] * 6
    expected = 9 * sum(convs) + 2 * sum(norms) + 64 * 10 + 10
    m = models.resnet20(10)
    shapes = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    assert sum(a.size for a in jax.tree.leaves(shapes)) == expected == 269_722
    out = jax.eval_shape(lambda p: m.apply(p, jnp.zeros((2, 32, 32, 3))), shapes)
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="groups must divide 16"):
        models.resnet20(10, groups=3)


def test_char_lstm_matches_mcmahan_sizes():
    """Embedding 8, two LSTM layers of 256, dense to the vocabulary: LSTM layer = 4 (in*H + H*H + H)."""
    m = models.char_lstm(vocab=256)
    shapes = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((2, 80)))
    H, E, V = 256, 8, 256
    expected = (V + 1) * E + 4 * (E * H + H * H + H) + 4 * (H * H + H * H + H) + H * V + V
    assert sum(a.size for a in jax.tree.leaves(shapes)) == expected


@pytest.mark.parametrize("factory", [lambda: models.char_lstm(vocab=16, embed_dim=4, hidden=8),
                                     lambda: models.transformer(vocab=16, width=8, depth=2, heads=2, context=6)],
                         ids=["lstm", "transformer"])
def test_sequence_models_are_causal(factory):
    """Logits at position t depend on tokens 0..t only: changing token 3 leaves positions 0..2 unchanged."""
    m = factory()
    x = jnp.asarray(np.random.default_rng(1).integers(0, 16, (2, 6)), jnp.float32)
    both = jnp.concatenate([x, x.at[:, 3].set((x[:, 3] + 5) % 16)])
    outs = np.asarray(jax.jit(lambda b: m.apply(m.init(jax.random.key(0), b), b))(both))
    out, out2 = outs[:2], outs[2:]
    assert out.shape == (2, 6, 16)
    np.testing.assert_array_equal(out[:, :3], out2[:, :3])
    assert np.abs(out[:, 3:] - out2[:, 3:]).max() > 1e-6


def test_transformer_refuses_bad_sizes():
    with pytest.raises(ValueError, match="width 10 is not a multiple of heads 4"):
        models.transformer(width=10, heads=4)
    m = models.transformer(vocab=16, width=8, heads=2, context=4)
    with pytest.raises(ValueError, match="exceeds its context 4"):
        m.init(jax.random.key(0), jnp.zeros((1, 5)))
