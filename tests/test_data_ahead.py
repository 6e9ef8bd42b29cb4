"""A generated population built ahead, while JAX starts (issue 25): ``jaxqfl.experiment.data_ahead``.

Started from the parsed settings and taken once the rules have resolved them, it is the population built in
place (array for array); a rule that changes a data setting is not served the started one; a generator's
refusal reaches the run as it would from building in place; what is not small, generated and in memory is not
started; and a whole run started ahead writes the final model byte for byte of a run that built its data in place.
"""
import pytest

from jaxqfl import Experiment
from jaxqfl.experiment import data_ahead, data_rules, pipeline
from jaxqfl.experiment.resolved import Refuse, settings_of
from jaxqfl.value_kinds import ExperimentError
from populations import assert_same_population


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXQFL_CACHE_DIR", str(tmp_path))
    yield tmp_path
    data_ahead._started = None


def test_a_population_started_ahead_is_the_one_built_in_place(fresh_cache):
    settings = settings_of(Experiment.of(dataset="synthetic-regression", num_clients=15, cohort_size=3, seed=4))
    assert settings.num_clients == 15 and data_ahead.start(settings)
    pipeline.resolve(settings, Refuse())
    started = data_ahead._started
    ahead = data_rules.build_population(settings)
    assert started.population is ahead and data_ahead._started is None  # taken once
    from jaxqfl import data

    assert_same_population(ahead, data.build("synthetic-regression", **data_rules.data_settings(settings)))


def test_the_dataset_default_clients_and_seed_name_the_same_population(fresh_cache):
    settings = settings_of(Experiment.of())  # no --num-clients, no --seed: the rules fill 1000 and 0
    assert settings.num_clients is None and settings.seed is None
    assert data_ahead.start(settings)
    key = data_ahead._started.key
    pipeline.resolve(settings, Refuse())
    assert key == data_ahead.key_of(settings)


def test_a_data_setting_changed_by_the_rules_is_not_served_the_started_population(fresh_cache):
    settings = settings_of(Experiment.of(num_clients=20, cohort_size=2, seed=1))
    assert data_ahead.start(settings)
    settings.seed = 2  # as if a rule had changed it after the start
    assert data_ahead.take(settings) is None
    assert data_ahead._started is None


def test_a_generator_refusal_reaches_the_run_as_from_building_in_place(fresh_cache):
    settings = settings_of(Experiment.of(num_clients=10, cohort_size=2))
    settings.synthetic_alpha = -1.0  # past the typed settings' own check: the generator refuses it
    assert data_ahead.start(settings)
    settings.num_clients, settings.seed = 10, 0
    with pytest.raises(ExperimentError, match="alpha must be a finite number >= 0, got -1.0"):
        data_rules.build_population(settings)
    data_ahead._started = None  # built in place: the same message
    with pytest.raises(ExperimentError, match="alpha must be a finite number >= 0, got -1.0"):
        data_rules.build_population(settings)


@pytest.mark.parametrize("experiment", [
    dict(population="procedural", num_clients=1000),  # no rows on the host
    dict(num_clients=data_ahead.MAX_CLIENTS + 1),  # too many clients to size before the memory check
    dict(num_clients=1000, client_size_mean=12.0),  # ~ e^14 rows a client: past MAX_BYTES
    dict(seeds="0,1"),  # a sweep: its seeds are resolved by the rules
])
def test_what_is_not_small_generated_and_in_memory_is_not_started(fresh_cache, experiment):
    assert not data_ahead.start(settings_of(Experiment.of(**experiment)))
    assert data_ahead._started is None


def test_a_file_dataset_is_not_started(fresh_cache, mnist_path):
    assert not data_ahead.start(settings_of(Experiment.of(dataset="mnist", data_path=str(mnist_path))))


def test_a_run_started_ahead_writes_the_model_of_a_run_built_in_place(fresh_cache, tmp_path, monkeypatch):
    import jaxqfl

    experiment = Experiment.of(num_clients=30, cohort_size=4, rounds=2, local_steps=2)
    first = jaxqfl.run(experiment, out=tmp_path / "ahead")
    monkeypatch.setattr(data_ahead, "start", lambda settings: False)
    monkeypatch.setenv("JAXQFL_CACHE_DIR", str(tmp_path / "another_cache"))  # generated here, on this thread
    second = jaxqfl.run(experiment, out=tmp_path / "in_place")
    assert first.status == second.status == 0
    assert (first.out / "final_params.msgpack").read_bytes() == (second.out / "final_params.msgpack").read_bytes()
