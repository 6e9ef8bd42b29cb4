"""The packed on-disk population (``jaxqfl data pack``, ``--dataset packed``): it round-trips an npz and a LEAF
folder exactly, is memory-mapped, gathers a cohort as the in-memory population does, runs bit for bit as the
in-memory streamed run (and the on-device run) of the same data, and refuses a damaged layout naming the file."""
import json

import numpy as np
import pytest

from jaxqfl import data
from jaxqfl.cli.main import main
from jaxqfl.data.packed import read_packed, write_packed
from jaxqfl.data.population import is_read_only_map
from jaxqfl.engine.streaming import gather_rows
from test_user_data import _write_leaf

FIELDS = ("x", "y", "offsets", "counts", "x_test", "y_test")


def _npz(path, seed=0, n=300, clients=9, test=True, regression=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))  # float64 in the file: the loader stores float32
    y = rng.normal(size=(n, 2)) if regression else rng.integers(0, 3, n)
    ids = np.array([f"user{i}" for i in range(clients)])[rng.integers(0, clients, n)]
    arrays = dict(x=x, y=y, client_id=ids)
    if test:
        arrays.update(x_test=x[:20] + 1, y_test=y[:20])
    np.savez(path, **arrays)
    return path


def _assert_same(packed, loaded):
    for f in FIELDS:
        a, b = getattr(packed, f), getattr(loaded, f)
        assert a.dtype == b.dtype and a.shape == b.shape, (f, a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_array_equal(a, b, err_msg=f)
    assert (packed.num_classes, packed.task, packed.name) == (loaded.num_classes, loaded.task, loaded.name)
    assert (packed.test_counts is None) == (loaded.test_counts is None)
    if loaded.test_counts is not None:
        np.testing.assert_array_equal(packed.test_counts, loaded.test_counts)


@pytest.mark.parametrize("test,regression", [(True, False), (False, True)])
def test_pack_round_trips_an_npz_exactly(tmp_path, capsys, test, regression):
    src = _npz(tmp_path / "mine.npz", test=test, regression=regression)
    assert main(["data", "pack", str(src), str(tmp_path / "packed")]) == 0
    out = capsys.readouterr().out
    assert "9 clients" in out and "bytes" in out
    packed = read_packed(tmp_path / "packed")
    _assert_same(packed, data.load_npz(src))
    meta = json.loads((tmp_path / "packed" / "meta.json").read_text())
    assert meta["source"]["path"] == str(src) and len(meta["source"]["sha256"]) == 64
    # a population with its clients' own test rows keeps them
    split = data.split_test_by_labels(data.load_npz(_npz(tmp_path / "c.npz")), seed=3)
    write_packed(split, tmp_path / "split")
    _assert_same(read_packed(tmp_path / "split"), split)


def test_pack_round_trips_a_leaf_folder_exactly(tmp_path):
    _write_leaf(tmp_path / "leaf", [["f_07", "f_02"], ["f_11", "f_03"]])
    assert main(["data", "pack", str(tmp_path / "leaf"), str(tmp_path / "packed")]) == 0
    packed, loaded = read_packed(tmp_path / "packed"), data.load_leaf(tmp_path / "leaf")
    _assert_same(packed, loaded)
    assert json.loads((tmp_path / "packed" / "meta.json").read_text())["source"]["kind"] == "folder"


def test_packed_rows_are_memory_mapped_and_gather_a_cohort_as_in_memory(tmp_path):
    loaded = data.load_npz(_npz(tmp_path / "mine.npz", n=500, clients=20))
    write_packed(loaded, tmp_path / "packed")
    packed = read_packed(tmp_path / "packed")
    assert is_read_only_map(packed.x) and is_read_only_map(packed.y) and not is_read_only_map(loaded.x)
    assert not packed.x.flags.writeable
    cohort = np.array([17, 3, 3, 11, 0])
    for a, b in zip(gather_rows(packed, cohort, 8, np.int32), gather_rows(loaded, cohort, 8, np.int32)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # opening reads no row: NaN written on disk over every client's rows but the cohort's is not refused
    # (Population's finite check is not run over mapped rows), and the cohort's gather is unchanged
    on_disk = np.load(tmp_path / "packed" / "x.npy", mmap_mode="r+")
    for c in sorted(set(range(packed.num_clients)) - set(cohort.tolist())):
        on_disk[packed.offsets[c]:packed.offsets[c] + packed.counts[c]] = np.nan
    on_disk.flush()
    del on_disk
    poisoned = read_packed(tmp_path / "packed")
    assert np.isnan(poisoned.x).any()
    np.testing.assert_array_equal(gather_rows(poisoned, cohort, 8, np.int32).x, gather_rows(loaded, cohort, 8, np.int32).x)
    # rows stored in another dtype are cast after the gather (only the cohort's rows are converted)
    half = data.Population(loaded.x.astype(np.float16), loaded.y, loaded.offsets, loaded.counts, loaded.x_test,
                           loaded.y_test, loaded.num_classes)
    write_packed(half, tmp_path / "half")
    got = gather_rows(read_packed(tmp_path / "half"), cohort, 8, np.int32)
    np.testing.assert_array_equal(got.x, gather_rows(half, cohort, 8, np.int32).x)


def _run(tmp_path, name, dataset, path, *extra):
    out = tmp_path / name
    rc = main(["run", "--dataset", dataset, "--data-path", str(path), "--cohort-size", "4", "--rounds", "3",
               "--eval-every", "1", "--local-steps", "2", "--model", "logreg", "--devices", "2", "--out", str(out),
               "--no-progress", *extra])
    assert rc == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    untimed = [{k: v for k, v in r.items() if "seconds" not in k} for r in records]
    return (out / "final_params.msgpack").read_bytes(), untimed, json.loads((out / "summary.json").read_text())


def test_a_run_from_the_packed_folder_equals_the_in_memory_runs_bit_for_bit(tmp_path):
    src = _npz(tmp_path / "mine.npz", n=400, clients=12, test=False)
    assert main(["data", "pack", str(src), str(tmp_path / "packed")]) == 0
    params, records, summary = _run(tmp_path, "packed-run", "packed", tmp_path / "packed")
    assert summary["stream"] and summary["dataset"] == "packed"  # --dataset packed implies --stream
    assert len(records) == 3 and all(np.isfinite(r["test_loss"]) for r in records)
    stream_params, stream_records, _ = _run(tmp_path, "npz-stream", "npz", src, "--stream")
    assert params == stream_params and records == stream_records
    device_params, device_records, _ = _run(tmp_path, "npz-device", "npz", src)
    assert params == device_params and records == device_records


def test_refusals_name_the_value(tmp_path, capsys):
    src = _npz(tmp_path / "mine.npz")
    out = tmp_path / "packed"
    assert main(["data", "pack", str(src), str(out)]) == 0
    before = (out / "x.npy").read_bytes()
    with pytest.raises(SystemExit) as exc:  # OUT exists: nothing overwritten
        main(["data", "pack", str(src), str(out)])
    assert exc.value.code == 2 and "holds a packed layout; refusing to overwrite it" in capsys.readouterr().err
    assert (out / "x.npy").read_bytes() == before
    with pytest.raises(FileExistsError, match="holds a packed layout"):
        write_packed(data.load_npz(src), out)
    with pytest.raises(SystemExit) as exc:  # SRC missing
        main(["data", "pack", str(tmp_path / "nope.npz"), str(tmp_path / "o2")])
    assert exc.value.code == 2 and "nope.npz" in capsys.readouterr().err
    assert main(["data", "pack", str(src), str(out), "--force"]) == 0  # --force replaces it, whole
    _assert_same(read_packed(out), data.load_npz(src))
    with pytest.raises(FileNotFoundError, match="no packed population"):
        read_packed(tmp_path / "absent")

    def damaged(edit):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        write_packed(read_packed(out), bad)
        edit(bad)
        return bad

    meta = lambda p, **kv: (p / "meta.json").write_text(json.dumps({**json.loads((p / "meta.json").read_text()),
                                                                     **kv}))
    offsets = np.load(out / "offsets.npy")
    cases = [
        (lambda p: (p / "offsets.npy").write_bytes((p / "offsets.npy").read_bytes()[:-16]),
         r"offsets\.npy' is not a readable \.npy array"),
        (lambda p: meta(p, version=7), r"meta\.json': version is 7; this jaxqfl reads version 1"),
        (lambda p: meta(p, format="other"), r"format is 'other'"),
        (lambda p: np.save(p / "offsets.npy", np.concatenate([offsets[:-1], [offsets[-1] - 1]])),
         r"runs from 0 to \d+; the row pointer must start at 0 and end at num_rows"),
        (lambda p: np.save(p / "offsets.npy", np.concatenate([[0, offsets[2], offsets[1]], offsets[3:]])),
         r"offsets\.npy' does not increase at client 1"),
        (lambda p: np.save(p / "y.npy", np.load(p / "y.npy").astype(np.int64)), r"y\.npy' has dtype <i8; meta\.json says '<i4'"),
        (lambda p: np.save(p / "x.npy", np.load(p / "x.npy")[:-1]), r"x\.npy' has shape"),
        (lambda p: (p / "y_test.npy").unlink(), r"y_test\.npy is missing"),
        (lambda p: (p / "meta.json").write_text('{"format": NaN}'), r"not readable strict JSON"),
        # class labels are scanned on disk too (one number a row): 50 would index past the model's outputs
        (lambda p: np.save(p / "y.npy", np.where(np.arange(len(np.load(p / "y.npy"))) == 0, 50,
                                                 np.load(p / "y.npy")).astype(np.int32)),
         r"y has labels in \[0, 50\], outside the allowed range \[0, 3\)"),
    ]
    for edit, match in cases:
        with pytest.raises(ValueError, match=match):
            read_packed(damaged(edit))
    bad = damaged(lambda p: meta(p, version=2))
    with pytest.raises(SystemExit) as exc:  # the run refuses it with its message, exit 2, no traceback
        main(["run", "--dataset", "packed", "--data-path", str(bad), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "version is 2" in err and "Traceback" not in err
    for flags, match in ((["--partition", "iid"], "keeps the clients it was packed with"),
                         (["--seeds", "0,1"], "--dataset packed")):
        with pytest.raises(SystemExit) as exc:
            main(["run", "--dataset", "packed", "--data-path", str(out), "--out", str(tmp_path / "r"),
                  "--no-progress", *flags])
        assert exc.value.code == 2 and match in capsys.readouterr().err


def test_federated_calibration_of_a_packed_population_equals_the_in_memory_one(tmp_path):
    import jax

    from jaxqfl import models
    from jaxqfl.engine.mesh import client_mesh
    from jaxqfl.ptq.federated_calibration import federated_calibrate

    loaded = data.load_npz(_npz(tmp_path / "mine.npz", n=400, clients=12))
    write_packed(loaded, tmp_path / "packed")
    packed = read_packed(tmp_path / "packed")
    model = models.mlp(hidden=(6,), num_outputs=3)
    params = model.init(jax.random.key(0), loaded.x[:1])
    kw = dict(client_ids=np.array([5, 0, 9]), rows_per_client=7, mesh=client_mesh(2), chunk_size=2, per_channel=True)
    a = federated_calibrate(model, params, packed, "minmax", **kw)  # the cohort's first 7 rows, gathered on the host
    b = federated_calibrate(model, params, loaded, "minmax", **kw)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k][0]), np.asarray(b[k][0]))
        np.testing.assert_array_equal(np.asarray(a[k][1]), np.asarray(b[k][1]))


def test_a_leaf_text_folder_packs_as_next_token_windows_and_runs_as_in_memory(tmp_path, capsys):
    """LEAF Shakespeare strings pack with --task next-token; --dataset packed then reads the task from the layout
    (the LSTM by default) and trains bit for bit as ``--dataset leaf --task next-token --stream``."""
    from test_text_data import _write_leaf_text

    leaf, packed = tmp_path / "leaf", tmp_path / "packed"
    _write_leaf_text(leaf)
    assert main(["data", "pack", str(leaf), str(packed)]) == 2  # string rows without --task next-token
    assert "next-token" in capsys.readouterr().err and not packed.exists()
    assert main(["data", "pack", str(leaf), str(packed), "--task", "next-token"]) == 0
    _assert_same(read_packed(packed), data.load_leaf(leaf, task="next-token"))

    def run(name, *flags):
        out = tmp_path / name
        assert main(["run", *flags, "--cohort-size", "2", "--rounds", "2", "--eval-every", "1", "--local-steps", "2",
                     "--embed-dim", "4", "--lstm-hidden", "8", "--devices", "2", "--out", str(out),
                     "--no-progress"]) == 0
        records = [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                   for line in (out / "metrics.jsonl").open()]
        return (out / "final_params.msgpack").read_bytes(), records, json.loads((out / "summary.json").read_text())

    params, records, summary = run("packed-run", "--dataset", "packed", "--data-path", str(packed))
    assert summary["model"] == "lstm" and len(records) == 2
    leaf_params, leaf_records, _ = run("leaf-run", "--dataset", "leaf", "--data-path", str(leaf), "--task",
                                       "next-token", "--stream")
    assert params == leaf_params and records == leaf_records
    with pytest.raises(SystemExit):
        main(["run", "--dataset", "packed", "--data-path", str(packed), "--task", "regression", "--out",
              str(tmp_path / "refused")])
    assert "packed for next-token" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_force_replaces_a_packed_layout_only_never_other_files(tmp_path, capsys):
    """--force replaced any OUT whole: a live run's folder, the folder holding SRC, the working folder. Now such
    folders are refused (exit 2, the foreign files named) with --force too, and left as they were."""
    src = _npz(tmp_path / "mine.npz")
    run_folder, holds_src, work = tmp_path / "run", tmp_path / "data", tmp_path / "work"
    run_folder.mkdir()
    (run_folder / ".jaxqfl.lock").write_text("")
    (run_folder / "metrics.jsonl").write_text("{}\n")
    holds_src.mkdir()
    inside = holds_src / "mine.npz"
    inside.write_bytes(src.read_bytes())
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    for out, source, name in ((run_folder, src, "'.jaxqfl.lock'"), (holds_src, inside, "'mine.npz'"),
                              (work, src, "'notes.txt'")):
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(SystemExit) as exc:
            main(["data", "pack", str(source), str(out), "--force"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "is not a packed layout, and is not replaced even with --force" in err
        assert name in err, err
        assert sorted(p.name for p in out.iterdir()) == before
        with pytest.raises(ValueError, match="not a packed layout"):
            write_packed(data.load_npz(src), out, force=True)
