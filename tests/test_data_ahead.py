"""A generated population built ahead, in a child process while JAX starts (issue 25): ``jaxqfl.experiment.data_ahead``.

The child's population-cache entry is the population built in place (array for array); a ``jaxqfl run`` whose
population was started ahead writes the final model byte for byte of one built in place; a child whose
generator refuses leaves no entry and the run refuses as it always did; what is not small, generated, in
memory and uncached, or a process that has started JAX, starts nothing. The child is forked before JAX
starts, so these tests run it in fresh interpreters.
"""
import json
import os
import subprocess
import sys

import pytest

from jaxqfl import Experiment, data
from jaxqfl.data import population_cache
from jaxqfl.experiment import data_ahead, data_rules
from jaxqfl.experiment.resolved import settings_of
from populations import assert_same_population

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh interpreter (no JAX): start the child for the settings given as JSON, wait for it, print what it did.
CHILD = """
import json, sys
from jaxqfl import Experiment
from jaxqfl.experiment import data_ahead
from jaxqfl.experiment.resolved import settings_of
settings = settings_of(Experiment.of(**json.loads(sys.argv[1])))
for name, value in json.loads(sys.argv[2]).items():  # values past the typed settings' own checks
    setattr(settings, name, value)
started = data_ahead.start(settings)
data_ahead.wait()
print(json.dumps({"started": started, "jax": "jax" in sys.modules}))
"""


def _start_in_fresh_interpreter(cache, experiment, raw=None):
    env = dict(os.environ, JAXQFL_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(experiment), json.dumps(raw or {})], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _resolved(experiment):
    settings = settings_of(Experiment.of(**experiment))
    settings.num_clients = settings.num_clients or 1000
    settings.seed = 0 if settings.seed is None else settings.seed
    return settings


def test_the_childs_entry_is_the_population_built_in_place(tmp_path):
    experiment = dict(dataset="synthetic-regression", num_clients=15, cohort_size=3, seed=4)
    assert _start_in_fresh_interpreter(tmp_path, experiment) == {"started": True, "jax": False}
    settings = _resolved(experiment)
    stored = population_cache.load(tmp_path / "data" / population_cache.key_of(data_rules.cache_entry_settings(settings)),
                                   data_rules.cache_entry_settings(settings))
    assert stored is not None
    assert_same_population(stored, data.build("synthetic-regression", **data_rules.data_settings(settings)))
    # the default dataset, with no --num-clients and no --seed: the entry the resolved run (1000 clients, seed 0) reads
    assert _start_in_fresh_interpreter(tmp_path, {}) == {"started": True, "jax": False}
    assert population_cache.has_entry(tmp_path / "data", data_rules.cache_entry_settings(_resolved({})))
    # once stored, nothing is started: the run reads it in place
    assert _start_in_fresh_interpreter(tmp_path, {}) == {"started": False, "jax": False}


def test_a_child_whose_generator_refuses_leaves_no_entry(tmp_path):
    experiment = dict(num_clients=10, cohort_size=2, seed=0)
    assert _start_in_fresh_interpreter(tmp_path, experiment, {"synthetic_alpha": -1.0})["started"]
    assert not (tmp_path / "data").exists() or not any(p.name[0] != "." for p in (tmp_path / "data").iterdir())


@pytest.mark.parametrize("experiment", [
    dict(population="procedural", num_clients=1000),  # no rows on the host
    dict(num_clients=data_ahead.MAX_CLIENTS + 1),  # too many clients to size before the memory check
    dict(num_clients=1000, client_size_mean=12.0),  # ~ e^14 rows a client: past MAX_BYTES
    dict(seeds="0,1"),  # a sweep: its seeds are resolved by the rules
])
def test_what_is_not_small_generated_and_in_memory_is_not_started(tmp_path, experiment):
    assert _start_in_fresh_interpreter(tmp_path, experiment) == {"started": False, "jax": False}


def test_a_file_dataset_or_a_process_that_started_jax_starts_nothing(tmp_path, monkeypatch, mnist_path):
    assert _start_in_fresh_interpreter(tmp_path, dict(dataset="mnist", data_path=str(mnist_path))) == {
        "started": False, "jax": False}
    import jax  # noqa: F401 (this process has JAX, as a script calling jaxqfl.run usually has)

    monkeypatch.setenv("JAXQFL_CACHE_DIR", str(tmp_path))
    assert not data_ahead.start(settings_of(Experiment.of(num_clients=10, cohort_size=2)))


def test_a_run_started_ahead_writes_the_model_of_a_run_built_in_place(tmp_path):
    flags = ["run", "--num-clients", "30", "--cohort-size", "4", "--rounds", "2", "--local-steps", "2", "--no-progress"]
    finals = []
    for name, ahead in (("ahead", True), ("in_place", False)):
        env = dict(os.environ, JAXQFL_CACHE_DIR=str(tmp_path / f"cache_{name}"), PYTHONPATH=ROOT)
        code = ("import sys\nfrom jaxqfl.experiment import data_ahead\nstart = data_ahead.start\n"
                + ("def started(settings):\n    s = start(settings)\n    print('started', s, file=sys.stderr)\n"
                   "    return s\ndata_ahead.start = started\n" if ahead else "data_ahead.start = lambda s: False\n")
                + "from jaxqfl.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
        done = subprocess.run([sys.executable, "-c", code, *flags, "--out", str(tmp_path / name)], env=env,
                              check=True, capture_output=True, text=True)
        assert ("started True" in done.stderr) == ahead  # the first run's population was started ahead
        finals.append((tmp_path / name / "final_params.msgpack").read_bytes())
    assert finals[0] == finals[1]
