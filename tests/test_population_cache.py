"""Generated populations built once (issue 25): ``jaxqfl.data.population_cache``.

A population read back equals the built one array for array (dtypes, offsets, the
clients' own test rows); another setting or version is another entry; a damaged entry
is built again, and so is one whose generator's source changed; the least recently used entries go past the size cap; the run path
(``build_population``) builds a generated population once per settings.
"""
import json

import numpy as np

from jaxqfl import data
from jaxqfl.data import population_cache as cache
from populations import assert_same_population


def _counted(builds, **kw):
    def build():
        builds.append(kw)
        return data.build(**kw)
    return build


SETTINGS = {"dataset": "synthetic-regression", "num_clients": 12, "seed": 3, "num_features": 7}


def test_a_population_read_back_equals_the_built_one_and_other_settings_miss(tmp_path):
    builds = []
    first = cache.cached(tmp_path, SETTINGS, _counted(builds, **SETTINGS))
    again = cache.cached(tmp_path, SETTINGS, _counted(builds, **SETTINGS))
    assert len(builds) == 1  # the second one was read back
    assert_same_population(again, data.build(**SETTINGS))
    assert_same_population(again, first)
    other = {**SETTINGS, "seed": 4}
    cache.cached(tmp_path, other, _counted(builds, **other))
    assert len(builds) == 2 and len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2
    clustering = {"dataset": "gaussian-mixture", "num_clients": 8, "seed": 1}  # int labels, its own task
    assert_same_population(cache.cached(tmp_path, clustering, _counted(builds, **clustering)),
                 cache.cached(tmp_path, clustering, _counted(builds, **clustering)))
    assert len(builds) == 3


def test_the_key_holds_the_versions_that_make_the_rows(monkeypatch):
    key = cache.key_of(SETTINGS)
    monkeypatch.setattr(np, "__version__", "0.0.0")
    assert cache.key_of(SETTINGS) != key


def test_an_edited_generator_misses_the_entry_it_built(tmp_path, monkeypatch):
    """A change to a generator's source, with no version bump, builds again instead of reading old rows."""
    import shutil

    sources = tmp_path / "data"
    shutil.copytree(cache.GENERATOR_SOURCES, sources, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "GENERATOR_SOURCES", sources)
    builds = []
    cache.cached(tmp_path / "cache", SETTINGS, _counted(builds, **SETTINGS))
    cache.cached(tmp_path / "cache", SETTINGS, _counted(builds, **SETTINGS))
    assert len(builds) == 1
    with open(sources / "synthetic.py", "a") as f:
        f.write("\n# an edit\n")
    cache.cached(tmp_path / "cache", SETTINGS, _counted(builds, **SETTINGS))
    assert len(builds) == 2


def test_a_damaged_entry_is_built_again_and_no_directory_reads_nothing(tmp_path):
    builds = []
    cache.cached(tmp_path, SETTINGS, _counted(builds, **SETTINGS))
    entry = tmp_path / cache.key_of(SETTINGS)
    (entry / "x.npy").write_bytes((entry / "x.npy").read_bytes()[:100])  # truncated
    again = cache.cached(tmp_path, SETTINGS, _counted(builds, **SETTINGS))
    assert len(builds) == 2
    assert_same_population(again, data.build(**SETTINGS))
    meta = json.loads((entry / "meta.json").read_text())  # rewritten whole, strict JSON
    assert meta["settings"] == SETTINGS and meta["format"] == cache.FORMAT
    cache.cached(None, SETTINGS, _counted(builds, **SETTINGS))
    cache.cached(tmp_path, {"bad": object()}, lambda: builds.append(0))  # not JSON: built, nothing written
    assert len(builds) == 4 and sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [entry.name]


def test_the_least_recently_used_entries_go_past_the_cap(tmp_path):
    import os

    names = []
    for seed in range(3):
        s = {**SETTINGS, "seed": seed}
        cache.cached(tmp_path, s, lambda s=s: data.build(**s))
        names.append(cache.key_of(s))
        os.utime(tmp_path / names[-1] / "meta.json", (1000 + seed, 1000 + seed))
    size = [sum(f.stat().st_size for f in (tmp_path / n).iterdir()) for n in names]
    cache.evict(tmp_path, keep=names[0], max_bytes=size[0] + size[2])  # one must go: the oldest but the kept one
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[2]])


def test_the_run_path_builds_a_generated_population_once(tmp_path, monkeypatch):
    from jaxqfl import Experiment
    from jaxqfl.experiment import data_rules, pipeline
    from jaxqfl.experiment.resolved import Refuse, settings_of

    monkeypatch.setenv("JAXQFL_CACHE_DIR", str(tmp_path))
    builds = []
    real = data.build
    monkeypatch.setattr(data, "build", lambda *a, **kw: builds.append(a) or real(*a, **kw))
    settings = settings_of(Experiment.of(num_clients=10, cohort_size=2, rounds=1))
    pipeline.resolve(settings, Refuse())
    a, b = data_rules.build_population(settings), data_rules.build_population(settings)
    assert builds == [("synthetic",)] and (tmp_path / "data").is_dir()
    assert_same_population(a, b)
