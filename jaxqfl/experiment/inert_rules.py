"""Data and model settings that only some configurations read: given to another, they are refused by name.

README's rule, "flags that do nothing are refused", for the settings of a dataset, a partitioner, a population
kind or a model architecture. Each entry below names a setting and who reads it; a setting whose value differs
from its default (``jaxqfl.Experiment()``) in a run whose configuration does not read it is refused before any
work, naming what does read it and what the run has instead (a value equal to the default cannot be told from
no value; it does nothing either way). ``validate`` runs once the dataset's defaults are filled in (``--model``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from jaxqfl.experiment.resolved import Refuser, Settings

_GENERATED = ("synthetic", "synthetic-regression", "gaussian-mixture")


class ReadBy(NamedTuple):
    """Who reads a setting: ``reads(args)``, and how a refusal says it (``what`` and the run's own ``instead``)."""

    reads: Callable[[Settings], bool]
    what: str
    instead: Callable[[Settings], str]


def _partition(name: str) -> ReadBy:
    return ReadBy(lambda a: a.partition == name, f"--partition {name}",
                  lambda a: f"--partition {a.partition}" if a.partition else "the dataset's own partition")


def _datasets(*names: str, what: str) -> ReadBy:
    return ReadBy(lambda a: a.dataset in names, what, lambda a: f"--dataset {a.dataset}")


def _model(name: str) -> ReadBy:
    return ReadBy(lambda a: a.model == name, f"--model {name}", lambda a: f"--model {a.model}")


_GENERATED_DATA = _datasets(*_GENERATED, what="the generated datasets (synthetic, synthetic-regression, "
                                              "gaussian-mixture)")
_MIXTURE = _datasets("gaussian-mixture", what="--dataset gaussian-mixture")
_REGRESSION = _datasets("synthetic-regression", what="--dataset synthetic-regression")
_TEXT = _datasets("text", what="--dataset text")

#: setting (flat name) -> who reads it
READ_BY = {
    "alpha": _partition("dirichlet"),
    "shards_per_client": _partition("shards"),
    "sigma": _partition("quantity"),
    "synthetic_alpha": _datasets("synthetic", "synthetic-regression", what="--dataset synthetic or "
                                                                           "synthetic-regression"),
    "synthetic_beta": _datasets("synthetic", "synthetic-regression", what="--dataset synthetic or "
                                                                          "synthetic-regression"),
    "num_features": _GENERATED_DATA,
    "client_size_mean": _GENERATED_DATA,
    "client_size_sigma": _GENERATED_DATA,
    "min_client_size": _GENERATED_DATA,
    "max_client_size": _GENERATED_DATA,
    "num_outputs": _REGRESSION,
    "noise": _REGRESSION,
    "components": _MIXTURE,
    "concentration": _MIXTURE,
    "separation": _MIXTURE,
    "test_clients": ReadBy(lambda a: a.population == "procedural", "--population procedural",
                           lambda a: f"--population {a.population}"),
    "context": _TEXT,
    "entries_per_client": _TEXT,
    "resnet_groups": _model("resnet20"),
    "embed_dim": _model("lstm"),
    "lstm_hidden": _model("lstm"),
    "lstm_layers": _model("lstm"),
    "transformer_width": _model("transformer"),
    "transformer_depth": _model("transformer"),
    "transformer_heads": _model("transformer"),
    "kmeans": ReadBy(lambda a: _clustering(a), "--task clustering",
                     lambda a: f"--task {a.task}" if a.task else "the dataset's own task"),
}


def _clustering(args: Settings) -> bool:
    from jaxqfl.experiment.clustering_runner import is_clustering

    return is_clustering(args)


def given(args: Settings, names) -> list[str]:
    """The settings among ``names`` (flat names) whose value differs from the default, in order; none for a
    resumed run, which keeps its checkpoint's config as it is (one an earlier version ran, ignoring such a value,
    continues)."""
    from jaxqfl.experiment.experiment import Experiment

    if getattr(args, "resume", None) is not None:
        return []
    defaults = Experiment().flat()
    return [name for name in names if getattr(args, name, defaults[name]) != defaults[name]]


def validate(refuser: Refuser, args: Settings) -> None:
    """Refuse the first setting of :data:`READ_BY` given a value in a run that does not read it (:func:`given`)."""
    for name in given(args, READ_BY):
        read_by = READ_BY[name]
        if not read_by.reads(args):
            flag = "--" + name.replace("_", "-")
            refuser.error(f"{flag} applies to {read_by.what}, not to this run ({read_by.instead(args)} does not "
                          f"read it); drop {flag}")
