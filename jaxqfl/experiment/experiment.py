"""``jaxqfl.Experiment``: everything a run computes, as frozen, typed sections.

    exp = jaxqfl.Experiment.of(dataset="mnist", data_path="mnist.npz", rounds=20, client_lr=0.05)
    exp = exp.replace(algorithm="scaffold")            # a new Experiment; the old one is unchanged
    exp.training.rounds                                # 20
    jaxqfl.run(exp, out="runs/scaffold")               # what `jaxqfl run` does, outputs included
    exp.to_toml()                                      # the flags' names as keys: `jaxqfl run --config` reads it
    jaxqfl.Experiment.from_toml("runs/x/config.toml")  # a run's resolved config repeats it

Sections (``dataclasses.fields(Experiment)``): data, generated, procedural, zoo, clustering, training, algorithm, model,
lora, evaluation, tiers, systems, asynchronous, quantization, aggregator, robust, privacy, execution. Each is a frozen
dataclass of settings (``jaxqfl.experiment.setting``); a setting's flat name is its flag's, with ``_``
(``client_lr`` for ``--client-lr``; ``async`` for ``--async``, the field ``asynchronous.async_mode``). A
value of None is the automatic value, resolved when the run starts (dataset-dependent defaults).

Every value is read and range-checked when the section is made, as its flag is; ``validate()`` also checks
the combinations (the rules, ``jaxqfl.experiment.*_rules``). Where a run goes (``out``), its metrics sinks and
whether it may overwrite are arguments of :func:`jaxqfl.run`, not settings: they do not change what is
computed, and a config file never holds them (as ``jaxqfl run --config`` refuses them).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field

from jaxqfl.experiment import toml_io
from jaxqfl.experiment.algorithm_settings import Aggregator, Algorithm
from jaxqfl.experiment.aggregation_settings import Privacy, Quantization, Robustness
from jaxqfl.experiment.data_settings import Clustering, Data, GeneratedData, Procedural, Zoo
from jaxqfl.experiment.run_settings import Execution
from jaxqfl.experiment.setting import info_of
from jaxqfl.experiment.training_settings import (Asynchronous, Evaluation, Lora, Model, Systems, Tiers,
                                                 Training)
from jaxqfl.value_kinds import InvalidValue


@dataclass(frozen=True)
class Experiment:
    """One federated experiment: its sections' settings (see the module docstring)."""

    data: Data = field(default_factory=Data)
    generated: GeneratedData = field(default_factory=GeneratedData)
    procedural: Procedural = field(default_factory=Procedural)
    zoo: Zoo = field(default_factory=Zoo)
    clustering: Clustering = field(default_factory=Clustering)
    training: Training = field(default_factory=Training)
    algorithm: Algorithm = field(default_factory=Algorithm)
    model: Model = field(default_factory=Model)
    lora: Lora = field(default_factory=Lora)
    evaluation: Evaluation = field(default_factory=Evaluation)
    tiers: Tiers = field(default_factory=Tiers)
    systems: Systems = field(default_factory=Systems)
    asynchronous: Asynchronous = field(default_factory=Asynchronous)
    quantization: Quantization = field(default_factory=Quantization)
    aggregator: Aggregator = field(default_factory=Aggregator)
    robust: Robustness = field(default_factory=Robustness)
    privacy: Privacy = field(default_factory=Privacy)
    execution: Execution = field(default_factory=Execution)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if not isinstance(section, _SECTION_TYPES[f.name]):
                raise InvalidValue(f"Experiment.{f.name} must be a {_SECTION_TYPES[f.name].__name__}, "
                                   f"got {type(section).__name__}")

    @classmethod
    def of(cls, **settings) -> "Experiment":
        """An experiment from flat setting names (the flags' names with ``_``); the rest at their defaults."""
        return cls().replace(**settings)

    def replace(self, **settings) -> "Experiment":
        """A copy with the given flat settings changed (each read and checked as its flag would be)."""
        by_section: dict[str, dict] = {}
        for name, value in settings.items():
            section, fname = _locate(name)
            by_section.setdefault(section, {})[fname] = value
        return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **kw)
                                            for s, kw in by_section.items()})

    def flat(self) -> dict:
        """Every setting by its flat name (``client_lr``, ``async``, ...), in the sections' order."""
        out = {}
        for sname, fname, info in _SETTINGS:
            out[info.dest] = getattr(getattr(self, sname), fname)
        return out

    def given(self) -> dict:
        """The settings that differ from their defaults, by flat name."""
        default = Experiment().flat()
        return {k: v for k, v in self.flat().items() if v != default[k] or type(v) is not type(default[k])}

    def to_toml(self) -> str:
        """The settings as TOML (``key = value``, the flags' names; automatic (None) values left out).

        ``Experiment.from_toml`` of this text gives an equal experiment, and ``jaxqfl run --config`` reads it.
        """
        return toml_io.to_toml({k.replace("_", "-"): v for k, v in self.flat().items()})

    @classmethod
    def from_toml(cls, path) -> "Experiment":
        """The experiment of a TOML file whose keys are flag names (a run's ``config.toml``, or one you wrote).

        An unknown key, a table, a key spelled both ways or a bad value is refused with ``InvalidValue``
        naming it.
        """
        values = toml_io.read_toml(path, "config")
        try:
            return cls.of(**values)
        except InvalidValue as e:
            raise InvalidValue(f"{str(path)!r}: {e}") from None

    def validate(self) -> "Experiment":
        """Check the combinations of settings (the compatibility matrix); returns ``self``.

        Raises ``InvalidValue`` naming the settings and what is allowed. Nothing is built or compiled.
        """
        from jaxqfl.experiment import runner
        from jaxqfl.experiment.resolved import Refuse, settings_of

        runner.validate(Refuse(), settings_of(self))  # the rules run on a copy: this experiment is unchanged
        return self


_SECTION_TYPES = {f.name: f.default_factory for f in dataclasses.fields(Experiment)}
_SETTINGS = tuple((sname, f.name, info_of(f)) for sname, cls in _SECTION_TYPES.items()
                  for f in dataclasses.fields(cls))
_BY_DEST = {info.dest: (sname, fname) for sname, fname, info in _SETTINGS}
_FIELD_NAMES = [fname for _, fname, _ in _SETTINGS]
_BY_DEST.update({fname: (sname, fname) for sname, fname, info in _SETTINGS  # a field's own name too, where unique
                 if fname not in _BY_DEST and _FIELD_NAMES.count(fname) == 1})


#: Flags of an invocation, not of an experiment: where each goes in Python.
_INVOCATION = {"out": "jaxqfl.run(experiment, out=...)", "overwrite": "jaxqfl.run(experiment, overwrite=True)",
               "resume": "jaxqfl.resume(folder)", "no_progress": "jaxqfl.run(experiment, progress=False)",
               "log": "jaxqfl.run(experiment, log=...)"}


def _locate(name: str) -> tuple[str, str]:
    key = name.replace("-", "_")
    if key in _INVOCATION and key not in _BY_DEST:
        raise InvalidValue(f"{name!r} belongs to a run, not to the experiment: {_INVOCATION[key]}")
    if key not in _BY_DEST:
        close = difflib.get_close_matches(key, [i.dest for _, _, i in _SETTINGS], n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise InvalidValue(f"unknown setting {name!r}{hint} (settings are the flags of `jaxqfl run`, with _ for -)")
    return _BY_DEST[key]


def settings() -> tuple:
    """``(section name, field name, SettingInfo)`` of every setting, in order (what the CLI's flags come from)."""
    return _SETTINGS
