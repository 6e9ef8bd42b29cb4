"""BOPs and model bytes (jaxqfl.models.cost) against hand counts from the layer shapes.

BOPs = MACs x weight bits x activation bits per layer (van Baalen et al. 2020);
MACs of a dense layer are in x out, of a 'SAME' convolution H x W x out x
window x in, of a scanned cell its per-step MACs x the sequence length.
"""
import jax.numpy as jnp
import pytest

from jaxqfl import models
from jaxqfl.models.cost import model_cost

MLP_LAYERS = [(784, 200), (200, 200), (200, 10)]  # zoo mlp(): 784-200-200-10
CNN_MACS = [28 * 28 * 32 * 5 * 5 * 1, 14 * 14 * 64 * 5 * 5 * 32, 3136 * 512, 512 * 10]  # McMahan et al. 2017
# (weight bits, activation bits) per layer, first .. last, for each preset's rules
BITS = {"none": lambda i, n: (32, 32), "full": lambda i, n: (8, 8), "w4a8": lambda i, n: (4, 8),
        "w8": lambda i, n: (8, 32), "mixed": lambda i, n: (8, 8) if i in (0, n - 1) else (4, 4)}


@pytest.mark.parametrize("preset", list(BITS))
def test_mlp_and_cnn_bops_and_bytes_equal_the_hand_count(preset):
    n = len(MLP_LAYERS)
    mlp_macs = [a * b for a, b in MLP_LAYERS]
    cost = model_cost(models.mlp(), preset, jnp.zeros((1, 784)))
    assert [c.macs for c in cost.layers] == mlp_macs
    assert cost.bops == sum(m * w * a for i, m in enumerate(mlp_macs) for w, a in [BITS[preset](i, n)])
    weights = sum(BITS[preset](i, n)[0] * a * b for i, (a, b) in enumerate(MLP_LAYERS)) / 8
    biases = 4 * sum(b for _, b in MLP_LAYERS)  # biases stay float under every preset
    assert cost.model_bytes == weights + biases
    assert cost.float_bytes == 4 * sum(a * b + b for a, b in MLP_LAYERS)

    cnn = model_cost(models.cnn(), preset, jnp.zeros((1, 28, 28, 1)))
    assert [c.macs for c in cnn.layers] == CNN_MACS
    assert cnn.bops == sum(m * w * a for i, m in enumerate(CNN_MACS) for w, a in [BITS[preset](i, 4)])


def test_a_scanned_lstm_counts_every_step():
    T, E, Hd, V = 12, 8, 16, 256
    cost = model_cost(models.char_lstm(embed_dim=E, hidden=Hd, layers=1), "full", jnp.zeros((1, T), jnp.int32))
    # the fused gate kernels: input E -> 4H and hidden H -> 4H per step, then the output layer H -> V per position
    assert cost.macs == T * (E * 4 * Hd + Hd * 4 * Hd) + T * Hd * V
    assert cost.bops == 64 * cost.macs


def test_a_batch_of_more_than_one_example_is_refused():
    with pytest.raises(ValueError, match=r"one example.*\(2, 784\)"):
        model_cost(models.mlp(), "full", jnp.zeros((2, 784)))


def test_a_run_reports_its_models_bops_and_bytes(tmp_path):
    import json

    from jaxqfl.cli.main import main

    out = tmp_path / "run"
    assert main(["run", "--num-clients", "10", "--cohort-size", "2", "--rounds", "1", "--local-steps", "1",
                 "--model", "mlp", "--hidden", "16", "--quant", "mixed", "--no-progress", "--devices", "1", "--chunk-size", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    d = 60  # the default Synthetic(1, 1) features, 10 classes: an MLP 60-16-10, first and last layers 8-bit
    assert summary["macs_per_example"] == d * 16 + 16 * 10
    assert summary["bops"] == 64 * (d * 16 + 16 * 10)
    assert summary["model_bytes"] == d * 16 + 16 * 10 + 4 * (16 + 10)


def test_quant_list_prints_every_presets_hand_counted_bops_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from jaxqfl.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--num-clients", "10", "--cohort-size", "5", "--model", "mlp", "--hidden", "16",
                 "--quant", "list"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    from jaxqfl.quant.policy import PRESETS

    assert set(lines) == set(PRESETS)
    layers = [(60, 16), (16, 10)]  # Synthetic(1, 1)'s 60 features, an MLP 60-16-10
    for preset, bits in BITS.items():  # the hand count of each preset's weight x input bits per layer
        want = sum(a * b * w * x for i, (a, b) in enumerate(layers) for w, x in [bits(i, len(layers))])
        assert int(lines[preset][1].replace(",", "")) == want, preset
    assert list(tmp_path.iterdir()) == []  # no run folder
