"""The aggregation settings of an experiment.

How client updates are quantized, sent and combined: codecs, robust rules, privacy.

Each field is one setting (``jaxqfl.experiment.setting``): its annotation the type, its default the
default, its doc the help of the ``jaxqfl run`` flag generated from it.
"""
from __future__ import annotations

from dataclasses import dataclass

from jaxqfl.choices import ATTACK_NAMES, DISTRIBUTED_MECHANISMS, SECURE_PROTOCOLS
from jaxqfl.registry import attacks as attack_registry
from jaxqfl import value_kinds as v
from jaxqfl.experiment.setting import Section, setting


@dataclass(frozen=True)
class Quantization(Section):
    """Quantization and communication."""

    section_name = "quantization"

    quant: str = setting('none',
                help='quantization-aware training preset: none, full (int8 weights+activations), half (bf16), mixed '
                     '(8-bit first/last layers, 4-bit rest), w4a8, w8, log4, nf4, fp8, lsq4, binary')
    uplink: str = setting('none',
                help='client->server update codec, e.g. none, qsgd:16, uniform:8, terngrad, sign+ef, natural, '
                     'topk:0.01+ef, randk:0.1, hadamard+qsgd:4 (FedPAQ = FedAvg with an unbiased uplink quantizer)')
    integer_aggregation: bool = setting(False, switch=True,
                help='sum the uplink codes as integers on a cohort-shared scale (uniform, qsgd, terngrad)')
    downlink: str = setting('none',
                help='server->client model codec (applied to the broadcast model), e.g. none, uniform:8')


_ATTACKS = [e for e in attack_registry.ENTRIES if e.cli and e.build is not None]
_ATTACK_DOC = ("Byzantine clients' behaviour (--byzantine-fraction of the population), for robustness studies: "
               + "; ".join(f"{e.name}, {e.doc}" for e in _ATTACKS) + "; default none")
_SCALE_DOC = ("attack strength (with --attack; default: the attack's own: "
              + ", ".join(f"{e.name} {e.scale:g}" for e in _ATTACKS if e.scale is not None)
              + "; computed from the round for " + ", ".join(e.name for e in _ATTACKS if e.scale is None
                                                             and not e.flips_labels) + ")")


@dataclass(frozen=True)
class Robustness(Section):
    """Attacks by Byzantine clients (for robustness studies)."""

    section_name = "robust"

    attack: str = setting('none', choices=ATTACK_NAMES, help=_ATTACK_DOC)
    byzantine_fraction: float | None = setting(None, float,
                help='malicious share of the population (with --attack; default 0.2)')
    attack_scale: float | None = setting(None, float, help=_SCALE_DOC)


@dataclass(frozen=True)
class Privacy(Section):
    """Privacy (DP-FedAvg, user-level) and secure aggregation."""

    section_name = "privacy"

    dp_clip: float | None = setting(None, v.positive_float,
                help="L2 clip norm C of each client's whole update (turns DP-FedAvg on; uniform client weights)")
    dp_noise: float | tuple[float, ...] | None = setting(None, v.nonneg_floats,
                help='noise multiplier z (noise std z C on the sum); a comma-separated list sweeps it')
    dp_epsilon: float | None = setting(None, v.positive_float,
                help="target epsilon: the noise multiplier is calibrated to the run's rounds (dp-accounting)")
    dp_delta: float | None = setting(None, v.fraction(True, True, '--dp-delta must be in (0, 1)'),
                help='delta (default 1 / num_clients^1.1)')
    dp_adaptive_quantile: float | None = setting(None, v.fraction(True, True, '--dp-adaptive-quantile must be in (0, 1)'),
                help='adaptive clipping (Andrew et al. 2021): C tracks this quantile of update norms')
    dp_distributed: str | None = setting(None, choices=DISTRIBUTED_MECHANISMS,
                help='distributed DP: clients add Skellam noise to b-bit codes summed under secure aggregation '
                     "(--secure-aggregation's protocol, secagg+ by default); --dp-noise z: noise std >= z C on the "
                     'sum')
    dp_bits: int | None = setting(None, v.positive_int,
                help="distributed DP: the secure sum's modulus 2^b (default 20); the grid follows from it")
    secure_aggregation: str | None = setting(None, choices=SECURE_PROTOCOLS,
                help='sum the integer uplink codes under simulated secure aggregation')
    dropout: float = setting(0.0, v.fraction(False, True, '--dropout must be in [0, 1)'),
                help='fraction of the cohort dropping out after masking (secure aggregation)')
    secagg_threshold: float = setting(0.5, v.fraction(True, False, '--secagg-threshold must be in (0, 1]'),
                help="Shamir threshold t as a fraction of a client's neighbours (t = floor(f k) + 1)")
    secagg_degree: int | None = setting(None, v.positive_int,
                help="SecAgg+'s number of neighbours k (even); default: the smallest k >= 2 ceil(log2 M) whose round "
                     'fails with probability <= 1e-6 at --dropout (all pairs when none does)')
