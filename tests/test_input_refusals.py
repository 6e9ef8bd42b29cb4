"""Issue 21, defects 8 and 9: bad input refused with a message naming the value, never a traceback."""
import json

import numpy as np
import pytest

from jaxqfl import data, privacy


@pytest.mark.parametrize("label", [2**31, 2**32 + 1, 2**40])
def test_labels_past_int32_are_refused_naming_file_key_and_value(tmp_path, label):
    y = np.arange(40) % 3
    y[5] = label
    path = tmp_path / "big.npz"
    np.savez(path, x=np.ones((40, 3), np.float32), y=y)
    with pytest.raises(ValueError, match=rf"big\.npz': key 'y' holds the label {label} at index 5"):
        data.load_npz(path, num_clients=4, partition="iid")
    pop = data.load_npz(path, num_clients=4, partition="iid", task="regression")  # real targets: allowed
    assert pop.y.max() == np.float32(label)


def _leaf(root, y_row, x_row=(1.0, 2.0)):
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        blob = {"users": ["u0"], "num_samples": [2], "user_data": {"u0": {"x": [list(x_row), [0.0, 1.0]],
                                                                          "y": [y_row, 0]}}}
        (root / split / "part.json").write_text(json.dumps(blob))


def test_leaf_labels_past_int32_name_the_json_file(tmp_path):
    _leaf(tmp_path, 2**32 + 1)
    with pytest.raises(ValueError, match=r"part\.json': user_data\['u0'\]\['y'\] holds the label 4294967297"):
        data.load_leaf(tmp_path)


def test_deeply_nested_leaf_json_is_refused_not_a_recursion_error(tmp_path):
    _leaf(tmp_path, 1)
    (tmp_path / "train" / "part.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"part\.json' nests its JSON deeper"):
        data.load_leaf(tmp_path)
    deep = 1.0
    for _ in range(100):
        deep = [deep]
    (tmp_path / "train").joinpath("part.json").unlink()
    blob = {"users": ["u0"], "num_samples": [1], "user_data": {"u0": {"x": [deep], "y": [0]}}}
    (tmp_path / "train" / "part.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=r"nests its first row 100 lists deep; a row may nest at most 63"):
        data.load_leaf(tmp_path)


def test_an_epsilon_past_the_calibrations_range_is_refused_with_the_range():
    kw = dict(num_clients=20, cohort_size=5)
    ceiling = privacy.max_target_epsilon(1e-5, 2, **kw)
    from jaxqfl.privacy.accounting import MIN_CALIBRATED_NOISE

    assert privacy.epsilon(MIN_CALIBRATED_NOISE, 1e-5, 2, **kw) == pytest.approx(ceiling)  # the fixed accountant's
    with pytest.raises(ValueError, match=r"target_epsilon=1e\+09 cannot be calibrated.*allowed targets lie in"):
        privacy.noise_for_epsilon(1e9, 1e-5, 2, **kw)


def test_cli_refuses_dp_epsilon_1e9_with_exit_2(tmp_path, capsys):
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--num-clients", "20", "--cohort-size", "5", "--rounds", "2", "--dp-clip", "1",
              "--dp-epsilon", "1e9", "--devices", "1", "--no-progress", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "error: target_epsilon=1e+09 cannot be calibrated" in capsys.readouterr().err


def test_label_flip_on_a_regression_task_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from cli_refusals import assert_refused_before_any_work

    import jaxqfl.data
    import jaxqfl.data.population_cache

    monkeypatch.setattr(jaxqfl.data, "build", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data built")))
    monkeypatch.setattr(jaxqfl.data.population_cache, "cached",  # nor read back from the population cache
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("data read")))
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                   ["--dataset", "synthetic-regression", "--attack", "label-flip"],
                                   "--task regression has no class labels to flip")
