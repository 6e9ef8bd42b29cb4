"""Text windows, LEAF Shakespeare strings and CIFAR-10 batches against references written here."""
import json
import pickle

import numpy as np
import pytest

from jaxqfl import data
from jaxqfl.data import text


def _reference_windows(s: bytes, T: int, pad_in=256):
    """Window k holds input bytes s[kT .. kT+T-1] and their successors; positions without a successor are padding."""
    xs, ys = [], []
    k = 0
    while k * T < len(s) - 1:
        x, y = [], []
        for t in range(T):
            i = k * T + t
            if i + 1 < len(s):
                x.append(s[i])
                y.append(s[i + 1])
            else:
                x.append(pad_in)
                y.append(-1)
        xs.append(x)
        ys.append(y)
        k += 1
    return np.array(xs, dtype=np.int64).reshape(-1, T), np.array(ys, dtype=np.int64).reshape(-1, T)


FILES = {
    "a.txt": b"Hello world, this is a.\n%\nSecond fortune\n%\nthird one, longer than the others\n%\n",
    "b.txt": b"bbb: short\n%\nanother entry in b\n",
    "c.txt": b"c",  # one byte: no window, left out
    "notes.md": b"not a .txt file: ignored",
}


def _folder(tmp_path):
    for name, body in FILES.items():
        (tmp_path / name).write_bytes(body)
    return tmp_path


def test_text_windows_equal_reference_per_file_with_tail_test_split(tmp_path):
    T = 6
    pop = text.load_text(_folder(tmp_path), T, test_fraction=0.25)
    assert pop.task == "next-token" and pop.num_classes == 256 and pop.num_clients == 2
    test_x, test_y = [], []
    for i, name in enumerate(["a.txt", "b.txt"]):
        rx, ry = _reference_windows(FILES[name], T)
        held = int(np.floor(0.25 * len(rx)))
        x, y = pop.client(i)
        np.testing.assert_array_equal(x, rx[:len(rx) - held])
        np.testing.assert_array_equal(y, ry[:len(rx) - held])
        test_x.append(rx[len(rx) - held:])
        test_y.append(ry[len(rx) - held:])
    np.testing.assert_array_equal(pop.x_test, np.concatenate(test_x))
    np.testing.assert_array_equal(pop.y_test, np.concatenate(test_y))
    # every byte but a text's first is a target exactly once (train + test)
    assert np.count_nonzero(pop.y >= 0) + np.count_nonzero(pop.y_test >= 0) == len(FILES["a.txt"]) + len(
        FILES["b.txt"]) - 2


def test_fortune_entries_group_into_clients_within_each_file(tmp_path):
    pop = text.load_text(_folder(tmp_path), 4, entries_per_client=2, test_fraction=0.1)
    # a.txt: entries 1+2 and 3; b.txt: entries 1+2 (the file's pieces, separators kept)
    expect = [b"Hello world, this is a.\n%\nSecond fortune\n%\n", b"third one, longer than the others\n%\n",
              b"bbb: short\n%\nanother entry in b\n"]
    assert pop.num_clients == 3
    for i, s in enumerate(expect):
        rx, ry = _reference_windows(s, 4)
        keep = len(rx) - int(np.floor(0.1 * len(rx)))
        np.testing.assert_array_equal(pop.client(i)[0], rx[:keep])
        np.testing.assert_array_equal(pop.client(i)[1], ry[:keep])
    assert b"".join(text.split_entries(FILES["a.txt"])) == FILES["a.txt"]


def test_text_partitioners_and_refusals(tmp_path):
    folder = _folder(tmp_path)
    natural = text.load_text(folder, 3)
    pop = data.build("text", num_clients=4, partition="iid", data_path=folder, context=3)
    assert pop.num_clients == 4 and pop.num_examples == natural.num_examples
    assert sorted(map(tuple, pop.x.tolist())) == sorted(map(tuple, natural.x.tolist()))
    with pytest.raises(ValueError, match="splits by class label"):
        data.build("text", num_clients=4, partition="dirichlet", data_path=folder)
    with pytest.raises(ValueError, match="has 2 natural clients"):
        data.build("text", num_clients=3, data_path=folder, context=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no \\*.txt file"):
        text.load_text(tmp_path / "empty", 3)
    with pytest.raises(ValueError, match="task 'next-token' needs text"):
        data.build("synthetic", num_clients=4, task="next-token")


@pytest.mark.parametrize("test_fraction", [0.1, 0.25, 0.3, 0.5])
def test_the_longest_context_the_refusal_names_is_exact(test_fraction):
    """The refusal's bound is the longest context with a test window: it builds one, a byte more holds none."""
    texts = [b"x" * 1_000, b"y" * 457]
    bound = text._longest_context(1_000 - 1, test_fraction)
    pop = text.text_population(texts, bound, test_fraction=test_fraction)
    assert pop.x_test.shape == (1, bound)  # the reference split: the tail window of the longest text
    with pytest.raises(ValueError, match=f"a context of at most {bound:,} holds one out"):
        text.text_population(texts, bound + 1, test_fraction=test_fraction)


def test_a_huge_context_is_refused_before_any_window_is_built(monkeypatch):
    """--context 2147483647 built a 16 GB window per text before the test split refused it (the kernel killed
    the run); the windows are counted first."""
    def no_windows(*a, **k):
        raise AssertionError("windows were built")

    monkeypatch.setattr(text, "windows", no_windows)
    with pytest.raises(ValueError, match="no client holds enough windows to hold out a test window"):
        text.text_population([b"a fortune\n%\n" * 100], 2**31 - 1)


def _write_leaf_text(root):
    users = {"train": {"ROMEO": (["But soft", "what lig"], ["!", "h"]), "JULIET": (["O Romeo"], ["."])},
             "test": {"NURSE": (["Madam"], ["!"])}}
    for split, us in users.items():
        (root / split).mkdir(parents=True)
        blob = {"users": list(us), "num_samples": [len(v[0]) for v in us.values()],
                "user_data": {u: {"x": x, "y": y} for u, (x, y) in us.items()}}
        (root / split / "all.json").write_text(json.dumps(blob))


def test_leaf_shakespeare_strings_become_next_byte_rows(tmp_path):
    _write_leaf_text(tmp_path)
    pop = data.load_leaf(tmp_path, task="next-token")
    assert pop.num_clients == 2 and pop.task == "next-token"
    width = len("But soft!") - 1

    def row(s):
        b = list(s.encode())
        pad = width - (len(b) - 1)
        return b[:-1] + [256] * pad, b[1:] + [-1] * pad

    for i, strings in enumerate([["But soft!", "what ligh"], ["O Romeo."]]):
        x, y = pop.client(i)
        np.testing.assert_array_equal(x, [row(s)[0] for s in strings])
        np.testing.assert_array_equal(y, [row(s)[1] for s in strings])
    np.testing.assert_array_equal(pop.y_test, [row("Madam!")[1]])
    with pytest.raises(ValueError, match="holds text"):
        data.load_leaf(tmp_path, task="classification")


def _write_cifar(root, n=6, seed=0):
    """The cifar-10-batches-py layout: pickled dicts of uint8 [n, 3072] (R, G, B planes) and label lists."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": d,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
        batches[name] = (d, labels)
    return batches


def test_cifar10_round_trips_a_made_up_pickle_file(tmp_path):
    batches = _write_cifar(tmp_path)
    x, y, x_test, y_test = data.load_cifar10(tmp_path)  # the parent of cifar-10-batches-py
    d, labels = batches["data_batch_3"]
    for j in range(6):  # image j of batch 3: pixel (r, c) channel ch = data[j, ch * 1024 + 32 r + c] / 255
        row = 12 + j
        for r, c, ch in [(0, 0, 0), (5, 31, 1), (31, 7, 2)]:
            assert x[row, r, c, ch] == np.float32(d[j, ch * 1024 + 32 * r + c]) / np.float32(255)
        assert y[row] == labels[j]
    assert x.shape == (30, 32, 32, 3) and x_test.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(y_test, batches["test_batch"][1])
    for partition in ("iid", "dirichlet", "shards", "quantity"):
        pop = data.build("cifar10", num_clients=3, partition=partition, data_path=tmp_path / "cifar-10-batches-py")
        assert pop.num_clients == 3 and pop.num_examples == 30 and pop.feature_shape == (32, 32, 3)
        assert sorted(map(bytes, pop.x.reshape(30, -1))) == sorted(map(bytes, x.reshape(30, -1)))


def test_cifar10_refuses_a_missing_batch_and_a_foreign_pickle(tmp_path):
    _write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_5").unlink()
    with pytest.raises(ValueError, match=r"lacks \['data_batch_5'\]"):
        data.load_cifar10(folder)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with open(folder / "data_batch_5", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        data.load_cifar10(folder)


def test_cifar10_names_the_batch_of_ragged_labels(tmp_path):
    """numpy cannot make one array of [[1], [2, 3]]: the refusal names the file and the keys, not numpy's words only."""
    _write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[1], [2, 3]]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2': 'data' and 'labels' must be an array and a flat list"):
        data.load_cifar10(folder)
