"""`jaxqfl run` saves the final model; `jaxqfl quantize` exports it to integers; bad input exits 2."""
import json

import jax
import numpy as np
import pytest

from jaxqfl import data, models, quant
from jaxqfl.cli.main import main
from jaxqfl.models.serialization import load_integer_model, load_params, save_params


def test_params_round_trip(tmp_path):
    m = models.mlp((7, 5))
    p = m.init(jax.random.key(0), np.zeros((1, 9), np.float32))
    save_params(tmp_path / "p.msgpack", p)
    q = load_params(tmp_path / "p.msgpack")
    jax.tree.map(np.testing.assert_array_equal, p, q)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["run", "--num-clients", "12", "--cohort-size", "4", "--rounds", "2", "--eval-every", "2",
               "--model", "mlp", "--hidden", "12", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_quantize_writes_an_integer_model_equal_to_the_pipeline(run_dir, capsys):
    out = run_dir / "int.msgpack"
    rc = main(["quantize", str(run_dir), "--policy", "w4a8", "--calibrate", "percentile", "--calibration-clients", "3",
               "--adjust", "bias,equalize", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "integer" in text and "smaller" in text
    im = load_integer_model(out)
    # the same pipeline in Python gives the same integer model and predictions
    cfg = json.loads((run_dir / "summary.json").read_text())["config"]
    pop = data.build("synthetic", num_clients=cfg["num_clients"], seed=cfg["seed"])
    model, graph = models.mlp((12,), pop.num_classes), models.mlp_graph(1)
    params = quant.equalize(jax.tree.map(jax.numpy.asarray, load_params(run_dir / "final_params.msgpack")), graph)
    from jaxqfl.ptq import federated_calibrate

    ranges = federated_calibrate(model, params, pop, "percentile", client_ids=np.arange(3), rows_per_client=64)
    policy = quant.calibrated_policy("w4a8", params, ranges)
    rows = np.concatenate([pop.client(i)[0][:64] for i in range(3)])
    params = quant.bias_correction(params, policy, models.layer_inputs(model, params, rows), graph)
    ref = quant.export_integer(quant.bias_to_grid(params, policy, graph), policy, graph)
    assert ref.meta == im.meta and ref.int_bytes == im.int_bytes
    np.testing.assert_array_equal(quant.integer_apply(im, pop.x_test), quant.integer_apply(ref, pop.x_test))


@pytest.mark.parametrize("argv, message", [
    (["quantize", "/nonexistent/run"], "no such directory"),
    (["quantize", "{run}", "--policy", "binary"], "--policy 'binary'"),
    (["quantize", "{empty}"], "has no summary.json"),
    (["quantize", "{run}", "--adjust", "bias,foo"], "got 'foo'"),
])
def test_bad_input_exits_2_with_a_message(argv, message, run_dir, tmp_path, capsys):
    argv = [a.format(run=run_dir, empty=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
