"""The training settings of an experiment.

Federated training: rounds, cohorts, local work, the algorithm and the model.

Each field is one setting (``jaxqfl.experiment.setting``): its annotation the type, its default the
default, its doc the help of the ``jaxqfl run`` flag generated from it.
"""
from __future__ import annotations

from dataclasses import dataclass

from jaxqfl.choices import (ASYNC_MODES, BASE_FORMATS, CLIENT_TEST, LORA_AGGREGATIONS, MODELS, SAMPLINGS,
    SERVER_OPTIMIZERS, STRAGGLERS, TIER_WEIGHTS, WEIGHTINGS)
from jaxqfl import value_kinds as v
from jaxqfl.experiment.setting import Section, setting
from jaxqfl.registry import datasets as dataset_registry
from jaxqfl.registry import models as model_registry


@dataclass(frozen=True)
class Training(Section):
    """Federated training."""

    section_name = "training"

    cohort_size: int | None = setting(None, v.positive_int, help='clients per round')
    rounds: int | None = setting(None, v.round_count,
                help="federated rounds (default: the dataset's, e.g. 300 for synthetic, 50 for mnist)")
    local_steps: int | tuple[int, ...] | None = setting(None, v.positive_ints,
                help='local steps per round; a comma-separated list sweeps it (padded to the largest, masked)')
    local_epochs: int | None = setting(None, v.positive_int,
                help="local epochs per round, instead of --local-steps (default: the dataset's)")
    batch_size: int | None = setting(None, v.nonneg_int, help='0 means full batch (FedSGD with 1 local step)')
    client_lr: float | tuple[float, ...] | None = setting(None, v.positive_floats,
                help='client learning rate; a comma-separated list sweeps it (one program for all values)')
    server_opt: str = setting('sgd', choices=SERVER_OPTIMIZERS,
                help='server optimizer on the mean delta: sgd (FedAvg), momentum (FedAvgM), adam / yogi / adagrad '
                     '(FedAdam / FedYogi / FedAdagrad, Reddi et al. 2021 Algorithm 2), optax-adam / optax-yogi / '
                     "optax-adagrad (optax's own, bias-corrected); default sgd")
    server_lr: float | tuple[float, ...] = setting(1.0, v.positive_floats,
                help='server learning rate (default 1); a comma-separated list sweeps it')
    weighting: str = setting('examples', choices=WEIGHTINGS,
                help='client weights in the mean: examples (p_i = n_i, FedAvg) or uniform (p_i = 1); default examples')
    sampling: str = setting('fixed', choices=SAMPLINGS,
                help='cohort sampling: fixed (--cohort-size clients without replacement) or poisson (each client '
                     'joins with probability q = cohort-size / num-clients, so --cohort-size is the EXPECTED cohort; '
                     'the joiners fill --max-cohort static slots, the rest are masked out)')
    max_cohort: int | None = setting(None, v.positive_int,
                help='with --sampling poisson: the static number of cohort slots M_max (default: the smallest m with '
                     'P(Binomial(num_clients, q) > m) <= 1e-9); rounds with more joiners keep a random M_max of them '
                     'and are reported')
    availability: str | None = setting(None, metavar='always|bernoulli:P|diurnal:PERIOD|FILE',
                help='which clients can be sampled each round (default always): each with probability P, with a per-'
                     'client daily cycle of PERIOD rounds, or a CSV client,availability of probabilities')
    selection: str | None = setting(None, metavar='uniform|power-of-choice:D|oort[:D]',
                help='which available clients form the cohort (default uniform): the cohort-size largest global-model'
                     " losses among D uniform candidates (power-of-choice), or Oort's utility (needs --speeds; D "
                     'defaults to min(num-clients, 4 cohort-size))')


_MODEL_DOC = ("the model: " + "; ".join(f"{e.name}, {e.doc}" for e in model_registry.ENTRIES)
              + "; default: the dataset's (" + ", ".join(f"{e.name} {e.defaults.model}" for e in dataset_registry.ENTRIES)
              + "; lstm for --task next-token)")


@dataclass(frozen=True)
class Model(Section):
    """Model."""

    section_name = "model"

    model: str | None = setting(None, choices=MODELS, help=_MODEL_DOC)
    hidden: tuple[int, ...] | None = setting(None, v.layer_sizes,
                help='MLP hidden sizes, e.g. 200,200 (--model mlp; default 200,200)')


@dataclass(frozen=True)
class Lora(Section):
    """Federated LoRA / QLoRA and pretrained starts."""

    section_name = "lora"

    lora_rank: int | None = setting(None, v.positive_int, metavar='R',
                help='train rank-R adapters W + (alpha/R) A B on a frozen base instead of the whole model (Hu et al. '
                     '2021; FedIT: A and B averaged separately)')
    lora_alpha: float | None = setting(None, v.positive_float, help='LoRA alpha (default: the rank)')
    lora_targets: str | None = setting(None, metavar='REGEX',
                help="regex on parameter paths of the kernels to adapt (default '(^|/)kernel$': every matmul kernel),"
                     " e.g. 'attn|mlp'")
    lora_tier_ranks: int | tuple[int, ...] | None = setting(None, v.positive_ints, metavar='R1,R2,...',
                help='heterogeneous ranks (HetLoRA, Cho et al. 2024): client i trains the leading block of rank R_(i '
                     'mod T), each <= --lora-rank; updates are zero-padded and averaged')
    lora_aggregation: str | None = setting(None, choices=LORA_AGGREGATIONS,
                help='fedit (default): A and B averaged separately (biased: mean(A) mean(B) != mean(AB)); product: '
                     "the server gathers the cohort's adapters and sets each pair to the rank-R SVD of the exact mean"
                     ' of the products A_i B_i (jaxqfl.lora.product_average)')
    base_quant: str | None = setting(None, choices=BASE_FORMATS,
                help='storage of the frozen base: none (float32, default), bf16, int8, int4, nf4 (QLoRA: blocks of 64, '
                     'double-quantized scales); dequantized inside every forward')
    init_from: str | None = setting(None, metavar='PATH',
                help='pretrained params: a run folder, a Flax msgpack params file, or an Orbax checkpoint folder; the'
                     ' LoRA base, or without --lora-rank the starting model')


@dataclass(frozen=True)
class Evaluation(Section):
    """Per-client evaluation."""

    section_name = "evaluation"

    client_test: str = setting('auto', choices=CLIENT_TEST,
                help="each client's test rows: auto (its own held-out rows, else labels for a pooled classification "
                     'test set), labels (the pooled test set split over the clients by their training labels), none '
                     '(a pooled test set stays pooled)')
    personal_eval: int | None = setting(None, v.nonneg_int, metavar='K',
                help="fine-tune the global model K local steps on each client's data before evaluating it on the "
                     "client's test rows (default 0; 1 for --algorithm perfedavg)")
    personal_lr: float | None = setting(None, v.positive_float,
                help='the fine-tuning step of --personal-eval (default: --client-lr; perfedavg: its inner step)')


@dataclass(frozen=True)
class Tiers(Section):
    """Client tiers (mixed precision)."""

    section_name = "tiers"

    tiers: str | None = setting(None,
                help="FRACTION/PRESET/UPLINK;... e.g. '0.3/w4a8/qsgd:4;0.5/full/uniform:8;0.2/none/none': each client"
                     " trains its tier's QAT preset and sends with its tier's codec; 'data' for every FRACTION reads "
                     "each client's tier from the --dataset npz file's 'tier' key")
    tier_weights: str = setting('examples', choices=TIER_WEIGHTS,
                help="examples (default: the usual weights) or precision (times 1/(1+q) of the tier's codec, FedHQ-"
                     'style)')


@dataclass(frozen=True)
class Systems(Section):
    """Systems heterogeneity and the virtual clock."""

    section_name = "systems"

    speeds: str | None = setting(None, metavar='lognormal:SIGMA|FILE',
                help='per-client seconds per local step and link bandwidth: log-normal with spread SIGMA around --step-'
                     'seconds and --bandwidth, or a CSV client,seconds_per_step,bandwidth_bps; runs the virtual clock '
                     '(sim_time in metrics.jsonl)')
    step_seconds: float = setting(1.0, v.positive_finite, help='median simulated seconds of one local step (1)')
    bandwidth: float = setting(1000000.0, v.positive_finite,
                help='median link bandwidth, bits per simulated second (1e6)')
    target_accuracy: float | None = setting(None, float, metavar='A',
                help='report the rounds (and, with --speeds, simulated seconds) to the first evaluation with test '
                     'accuracy >= A, in (0, 1]')
    deadline: float | None = setting(None, v.positive_finite, metavar='SECONDS',
                help="each round's deadline in simulated seconds (needs --speeds and --stragglers drop|partial)")
    stragglers: str = setting('wait', choices=STRAGGLERS,
                help='clients that cannot meet --deadline: wait (no deadline, the default), drop them, or keep the '
                     'partial work they do before it')


@dataclass(frozen=True)
class Asynchronous(Section):
    """Asynchronous FL (FedBuff)."""

    section_name = "asynchronous"

    async_mode: str | None = setting(None, choices=ASYNC_MODES, dest='async',
                help='buffered asynchronous rounds (FedBuff, Nguyen et al. 2022) on the virtual clock: needs '
                     '--speeds; one round = one server step on a buffer of --buffer arrivals')
    concurrency: int | None = setting(None, v.positive_int, metavar='C',
                help='clients training at once (--async fedbuff; replaces --cohort-size)')
    buffer: int | None = setting(None, v.positive_int, metavar='K',
                help='arrivals per server step, K <= C (--async fedbuff)')
    staleness: str | None = setting(None, metavar='constant|sqrt|poly:A',
                help='weight factor of an update s server steps stale: constant (1), sqrt (1/sqrt(1+s)), poly:A '
                     '((1+s)^-A, A > 0); default constant (--async fedbuff)')
