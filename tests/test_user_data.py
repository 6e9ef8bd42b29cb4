"""The user's own data: from_arrays, .npz files and LEAF folders round-trip, keep natural clients, refuse bad input."""
import json

import numpy as np
import pytest

from jaxqfl import data
from jaxqfl.cli.main import main


def _arrays(seed=0, n=60, d=3, clients=("b", "a", "c", "d")):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, 4, n)
    ids = np.array(clients)[rng.integers(0, len(clients), n)]
    return x, y, ids


def _client_rows(x, y, ids):
    """{id: (x rows, y rows)} in the order given."""
    return {c: (x[ids == c], y[ids == c]) for c in np.unique(ids)}


def test_from_arrays_natural_clients_come_back_as_written():
    x, y, ids = _arrays()
    xt, yt = x[:7] + 1, y[:7]
    pop = data.from_arrays(x, y, client_ids=ids, x_test=xt, y_test=yt)
    assert pop.task == "classification" and pop.num_classes == 4 and pop.num_clients == 4
    for i, (c, (xc, yc)) in enumerate(_client_rows(x, y, ids).items()):  # client i = i-th sorted id
        px, py = pop.client(i)
        np.testing.assert_array_equal(px, xc)
        np.testing.assert_array_equal(py, yc)
    np.testing.assert_array_equal(pop.x_test, xt)
    np.testing.assert_array_equal(pop.y_test, yt)


def test_from_arrays_holds_out_test_rows_per_client_and_loses_none():
    x, y, ids = _arrays(n=200)
    pop = data.from_arrays(x, y, client_ids=ids, test_fraction=0.25, seed=3)
    sizes = np.array([np.sum(ids == c) for c in np.unique(ids)])
    np.testing.assert_array_equal(pop.counts, sizes - np.floor(0.25 * sizes))
    assert len(pop.x_test) == np.floor(0.25 * sizes).sum()
    # train + test rows are exactly the input rows, and each client's training rows are its own
    both = np.concatenate([pop.x, pop.x_test])
    assert sorted(map(tuple, both)) == sorted(map(tuple, x))
    for i, c in enumerate(np.unique(ids)):
        own = set(map(tuple, x[ids == c]))
        assert set(map(tuple, pop.client(i)[0])) <= own
    np.testing.assert_array_equal(data.from_arrays(x, y, client_ids=ids, test_fraction=0.25, seed=3).x, pop.x)


def test_from_arrays_partitioners_and_regression_targets():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 2, 2))
    y = rng.normal(size=(100, 3))
    pop = data.from_arrays(x, y, partition="iid", num_clients=9, seed=0)
    assert pop.task == "regression" and pop.num_classes == 0 and pop.y.shape == (90, 3)
    assert pop.num_clients == 9 and pop.x.dtype == np.float32 and pop.feature_shape == (2, 2)
    assert sorted(map(lambda r: r.tobytes(), np.concatenate([pop.x, pop.x_test]))) == sorted(
        map(lambda r: r.astype(np.float32).tobytes(), x))
    labels = rng.integers(0, 5, 100)
    dirichlet = data.from_arrays(x, labels, partition="dirichlet", num_clients=4, alpha=0.1)
    assert dirichlet.num_clients == 4 and dirichlet.name == "arrays/dirichlet(alpha=0.1)"
    clustering = data.from_arrays(x, labels, partition="iid", num_clients=4, task="clustering")
    assert clustering.task == "clustering" and clustering.num_classes == 5


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(x=np.zeros(60)), r"x has shape \(60,\); expected \[N, features"),
        (dict(x=np.array([["a"] * 3] * 60)), r"x has dtype <U1; expected numbers"),
        (dict(y=np.zeros(59, int)), r"y has shape \(59,\); expected \[60\]"),
        (dict(y=np.r_[np.nan, np.zeros(59)], task="regression"), r"y holds 1 NaN or Inf.*first nan at index \(0,\)"),
        (dict(y=np.r_[0.5, np.zeros(59)], task="classification"), r"non-integer label 0\.5 at index 0"),
        (dict(y=np.r_[-1, np.zeros(59, int)]), r"label -1 at index 0; labels must be >= 0"),
        (dict(client_ids=np.zeros(5)), r"client_ids has shape \(5,\); expected \[60\]"),
        (dict(client_ids=None, partition="natural"), r"partition 'natural' needs client_ids"),
        (dict(client_ids=None, partition="iid"), r"partition 'iid' needs num_clients"),
        (dict(num_clients=3), r"num_clients=3 but client_ids holds 4 distinct clients"),
        (dict(x_test=np.zeros((4, 3))), r"x_test is given but y_test is not"),
        (dict(x_test=np.zeros((4, 2)), y_test=np.zeros(4, int)), r"x_test has shape \(4, 2\); expected \[M >= 1, 3\]"),
        (dict(partition="zipf"), r"unknown partition 'zipf'; allowed partitions are natural, iid"),
        (dict(task="ranking"), r"task 'ranking' is not one of classification, regression, clustering"),
        (dict(test_fraction=1.5), r"test_fraction must lie in \(0, 1\), got 1\.5"),
        (dict(num_classes=2), r"num_classes=2 but the labels reach 3"),
    ],
)
def test_from_arrays_refuses_bad_input_naming_the_array_and_value(changes, match):
    x, y, ids = _arrays()
    kw = dict(x=x, y=y, client_ids=ids)
    kw.update(changes)
    with pytest.raises(ValueError, match=match):
        data.from_arrays(kw.pop("x"), kw.pop("y"), **kw)


def test_npz_round_trip_with_natural_clients_and_test_split(tmp_path):
    x, y, ids = _arrays(seed=2)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, client_id=ids, x_test=x[:5], y_test=y[:5])
    pop = data.load_npz(path)
    expected = data.from_arrays(x, y, client_ids=ids, x_test=x[:5], y_test=y[:5])
    for field in ("x", "y", "offsets", "counts", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(pop, field), getattr(expected, field))
    assert pop.name == "mine/natural"


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x=np.zeros((4, 2))), r"mine\.npz.*lacks the key\(s\) \['y'\]"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4), labels=np.zeros(4)), r"mine\.npz.*unknown key\(s\) \['labels'\]"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(3, int)), r"mine\.npz': key 'y' has shape \(3,\); expected \[4\]"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4, int), client_id=np.zeros((4, 2))),
         r"mine\.npz': key 'client_id' has shape \(4, 2\)"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4, int), x_test=np.zeros((2, 2))),
         r"mine\.npz': key 'x_test' is given but key 'y_test' is not"),
        (dict(x=np.array([[1.0, np.inf]] * 4), y=np.zeros(4, int)), r"mine\.npz': key 'x' holds 4 NaN or Inf values \(first inf at index \(0, 1\)\)"),
        (dict(x=np.array([None] * 4, dtype=object), y=np.zeros(4)), r"mine\.npz': key 'x' cannot be read without pickle"),
    ],
)
def test_npz_refuses_malformed_files_naming_file_key_and_value(tmp_path, arrays, match):
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        data.load_npz(path, partition="iid", num_clients=2)


@pytest.mark.parametrize("content, match", [
    (b"not a zip at all", r"mine\.npz' is not an \.npz archive \(a zip of \.npy arrays, as numpy\.savez writes\)"),
    (b"", r"mine\.npz' is not an \.npz archive"),
    (b"\x93NUMPY\x01\x00", r"mine\.npz' is not a readable \.npz archive"),  # an .npy header, cut short
])
def test_npz_names_a_file_that_is_no_archive_without_suggesting_pickle(tmp_path, content, match):
    """numpy takes any file that is neither a zip nor an .npy for a pickle and suggests allow_pickle=True."""
    path = tmp_path / "mine.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        data.load_npz(path, partition="iid", num_clients=2)
    assert "pickle" not in str(info.value)


def _write_leaf(root, users_per_file, seed=0, d=5):
    """LEAF layout: root/train/*.json and root/test/*.json; returns {user: (x, y)} of the training split."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for f, users in enumerate(users_per_file):
            blob = {"users": [], "num_samples": [], "user_data": {}}
            for u in users:
                n = int(rng.integers(1, 6))
                x = rng.normal(size=(n, d)).round(3)
                y = rng.integers(0, 3, n)
                blob["users"].append(u)
                blob["num_samples"].append(n)
                blob["user_data"][u] = {"x": x.tolist(), "y": y.tolist()}
                if split == "train":
                    written[u] = (x, y)
            (root / split / f"part_{f}.json").write_text(json.dumps(blob))
    return written


def test_leaf_round_trip_keeps_the_natural_users_in_file_order(tmp_path):
    written = _write_leaf(tmp_path, [["f_07", "f_02"], ["f_11"]])
    pop = data.load_leaf(tmp_path)
    assert pop.num_clients == 3 and pop.task == "classification"
    for i, u in enumerate(["f_07", "f_02", "f_11"]):  # part_0's users in listed order, then part_1's
        x, y = pop.client(i)
        np.testing.assert_array_equal(x, written[u][0].astype(np.float32))
        np.testing.assert_array_equal(y, written[u][1])
    test = json.loads((tmp_path / "test" / "part_0.json").read_text())
    assert len(pop.x_test) >= sum(test["num_samples"])


def _corrupt(root, edit):
    path = root / "train" / "part_0.json"
    blob = json.loads(path.read_text())
    edit(blob)
    path.write_text(json.dumps(blob))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda b: b.pop("user_data"), r"part_0\.json' lacks the key\(s\) \['user_data'\]"),
        (lambda b: b["num_samples"].append(3), r"part_0\.json': 'users' lists 2 users but 'num_samples' has 3"),
        (lambda b: b["num_samples"].__setitem__(0, 99), r"part_0\.json': user 'u0' has num_samples 99"),
        (lambda b: b["user_data"].pop("u1"), r"part_0\.json': user 'u1' is in 'users' but not in 'user_data'"),
        (lambda b: b["user_data"]["u0"]["x"].__setitem__(0, [1.0]),
         r"part_0\.json': user_data\['u0'\]\['x'\] has rows of different lengths"),
        (lambda b: b["user_data"]["u0"].__setitem__("x", ["to be or not"] * b["num_samples"][0]),
         r"part_0\.json': user_data\['u0'\]\['x'\] holds text"),
        (lambda b: b["user_data"]["u1"]["y"].__setitem__(0, 0.5), r"non-integer label 0\.5"),
    ],
)
def test_leaf_refuses_malformed_json_naming_file_key_and_value(tmp_path, edit, match):
    _write_leaf(tmp_path, [["u0", "u1"]])
    _corrupt(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        data.load_leaf(tmp_path, task="classification")


def test_leaf_refuses_a_missing_split_and_bad_json(tmp_path):
    _write_leaf(tmp_path, [["u0"]])
    (tmp_path / "train" / "part_0.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"part_0\.json' is not readable JSON"):
        data.load_leaf(tmp_path)
    with pytest.raises(ValueError, match=r"has no train/ folder"):
        data.load_leaf(tmp_path / "test")


def test_cli_refuses_a_malformed_file_with_exit_2_and_no_traceback(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((10, 2)), y=np.zeros(9, int))
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dataset", "npz", "--data-path", str(path), "--num-clients", "2", "--cohort-size", "2",
              "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "bad.npz" in err and "key 'y' has shape (9,)" in err and "Traceback" not in err
    leaf = tmp_path / "leaf"
    _write_leaf(leaf, [["u0", "u1"]])
    _corrupt(leaf, lambda b: b.pop("users"))
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dataset", "leaf", "--data-path", str(leaf), "--out", str(tmp_path / "o"), "--no-progress"])
    assert exc.value.code == 2 and "lacks the key(s) ['users']" in capsys.readouterr().err


def test_cli_runs_an_npz_with_natural_clients(tmp_path, capsys):
    x, y, ids = _arrays(seed=5, n=80)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, client_id=ids)
    out = tmp_path / "run"
    rc = main(["run", "--dataset", "npz", "--data-path", str(path), "--cohort-size", "4", "--rounds", "2",
               "--eval-every", "2", "--local-steps", "2", "--model", "logreg", "--devices", "2", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_clients"] == 4 and summary["task"] == "classification"
    assert summary["num_examples"] == data.load_npz(path).num_examples


def test_the_cli_says_what_a_data_path_or_resume_folder_is_instead(tmp_path, capsys):
    """A device, a link that leads nowhere, a file given to --resume, a folder that holds no run: each refusal
    says which (they all read 'no such file' or 'no such folder', or blamed an interrupted run)."""
    from jaxqfl.cli.main import main

    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    (tmp_path / "plain").mkdir()
    data_file = tmp_path / "d.npz"
    data_file.write_bytes(b"")
    cases = [
        (["--dataset", "npz", "--data-path", "/dev/null", "--num-clients", "20"], "not a regular file (a device"),
        (["--dataset", "npz", "--data-path", str(loop), "--num-clients", "20"], "a link that leads to no file"),
        (["--resume", str(data_file)], "is a file; --resume takes the folder of a run (its --out)"),
        (["--resume", str(tmp_path / "plain")], "not a run's folder (it holds no config.toml and no checkpoints/)"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["run", *flags, "--print-config"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err, (flags, err)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_array_shapes_are_the_arrays_shapes(tmp_path, save):
    """The memory check sizes an archive from its .npy headers (indexing it decompressed each array whole)."""
    from jaxqfl.data.npz_archive import array_shapes

    arrays = {"x_train": np.zeros((7, 28, 28), np.uint8), "x_test": np.ones((3, 28, 28), np.uint8),
              "y": np.arange(5, dtype=np.int64)}
    save(tmp_path / "a.npz", **arrays)
    assert array_shapes(str(tmp_path / "a.npz"), tuple(arrays)) == {k: a.shape for k, a in arrays.items()}
    with pytest.raises(KeyError):
        array_shapes(str(tmp_path / "a.npz"), ("missing",))
