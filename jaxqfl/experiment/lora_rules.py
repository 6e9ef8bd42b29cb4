"""``jaxqfl run``'s federated LoRA / QLoRA flags and ``--init-from`` (the library: ``jaxqfl.lora``, ``jaxqfl.models.pretrained``).

``--lora-rank R`` fine-tunes adapters of rank R on the frozen base (``--init-from``'s
params, or the model initialised from the run seed when none is given), held once
per device and stored in ``--base-quant`` form (none, bf16, int8, int4, nf4 with
double quantization: QLoRA). ``--lora-tier-ranks 8,4,2`` gives client i the rank of
tier ``i mod 3`` (HetLoRA). Without ``--lora-rank``, ``--init-from`` starts full
fine-tuning from the given params. ``validate`` runs before JAX starts. A LoRA
run's ``final_params.msgpack`` holds the adapters; ``merged_params.msgpack`` the
base with the adapters merged in (``lora.merge``), loadable by the original model,
and with ``--base-quant`` also ``merged_params_<format>.msgpack``, the merged model
re-quantized in the base's format for serving (``lora.base_quant.load``).
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

from jaxqfl import choices

import os
import re
import sys


BASE_FORMATS = choices.BASE_FORMATS
DEFAULT_TARGETS = r"(^|/)kernel$"  # jaxqfl.lora.DEFAULT_TARGETS (checked by a test)
AGGREGATIONS = choices.LORA_AGGREGATIONS
MERGED_PARAMS = "merged_params.msgpack"  # a LoRA run's base + adapters as the original model's params


def merged_quantized(fmt: str) -> str:
    """The file of the merged model re-quantized in the base's format (``lora.base_quant.load`` reads it)."""
    return f"merged_params_{fmt}.msgpack"


def validate(refuser: Refuser, args: Settings) -> None:
    """Refuse LoRA flags that do not fit each other or the run (before JAX starts)."""
    rank = args.lora_rank
    if rank is None:
        for flag in ("lora_alpha", "lora_targets", "lora_tier_ranks", "lora_aggregation", "base_quant"):
            if getattr(args, flag) is not None:
                refuser.error(f"--{flag.replace('_', '-')} applies to LoRA runs: add --lora-rank R")
    else:
        if args.lora_targets is not None:
            try:
                re.compile(args.lora_targets)
            except re.error as e:
                refuser.error(f"--lora-targets {args.lora_targets!r} is not a regular expression: {e}")
        if args.lora_tier_ranks is not None and max(args.lora_tier_ranks) > rank:
            refuser.error(f"--lora-tier-ranks {','.join(map(str, args.lora_tier_ranks))}: every tier's rank must be "
                           f"at most --lora-rank {rank}")
        if args.quant not in (None, "none"):
            refuser.error(f"--lora-rank trains float adapters on a frozen base; --quant {args.quant} (QAT of the "
                           "whole model) does not combine with it: use --base-quant to store the base in low precision")
        if args.lora_aggregation == "product":
            other = [flag for flag, on in (
                (f"--aggregator {args.aggregator}", args.aggregator != "mean"),
                ("--dp-clip", getattr(args, "dp_clip", None) is not None),
                ("--secure-aggregation", bool(getattr(args, "secure_aggregation", None))),
                ("--integer-aggregation", bool(getattr(args, "integer_aggregation", False)))) if on]
            if other:
                refuser.error(f"--lora-aggregation product gathers every client's adapters to multiply them; it "
                               f"does not combine with {', '.join(other)} (sums): use --lora-aggregation fedit")
        if getattr(args, "stream", False):
            refuser.error("--lora-rank needs the population on the devices (the base travels with it); drop --stream")
    if args.init_from is not None and not os.path.exists(args.init_from):
        refuser.error(f"--init-from {args.init_from!r}: no such file or folder")


def adapted(args: Settings, model, population):
    """The run's model: ``model`` started from ``--init-from``, or its LoRA model on that base."""
    if args.lora_rank is None and args.init_from is None:
        return model
    import jax

    from jaxqfl import lora
    from jaxqfl.models import pretrained

    sample_x = population.x[:1]
    base = pretrained.initial_params(model, sample_x, seed=args.seed, source=args.init_from)
    if args.lora_rank is None:
        return pretrained.starting_from(model, base)
    adapted_model = lora.adapt(model, base, rank=args.lora_rank, alpha=args.lora_alpha,
                               targets=args.lora_targets or DEFAULT_TARGETS,
                               base_quant_format=args.base_quant or "none")
    _warn_full_rank(args, lora.full_rank_kernels(jax.eval_shape(adapted_model.init, jax.random.key(0), sample_x)))
    return adapted_model


def _warn_full_rank(args: Settings, full: dict) -> None:
    """A warning naming the kernels ``--lora-rank`` adapts at full rank (``lora.full_rank_kernels``): not an error
    (a classifier's last layer is often narrower than the rank), but those adapters are not low-rank."""
    if not full:
        return
    listed = ", ".join(f"{path} ({d_in} x {d_out})" for path, (d_in, d_out) in full.items())
    below = min(min(shape) for shape in full.values())
    print(f"jaxqfl run: warning: --lora-rank {args.lora_rank} is at least the smaller side of {len(full)} adapted "
          f"kernel(s): {listed}. Their adapters are not low-rank: each holds more parameters than its kernel and "
          f"can express no update that fine-tuning the kernel could not. A rank below {below} keeps every adapter "
          f"low-rank; --lora-targets can leave those kernels out.", file=sys.stderr, flush=True)


def wrap_algorithm(args: Settings, algorithm, num_clients: int):
    """HetLoRA's per-client ranks (``--lora-tier-ranks``) and product averaging's server step around the algorithm."""
    from jaxqfl import lora

    if args.lora_tier_ranks is not None:
        algorithm = lora.heterogeneous_ranks(algorithm, lora.rank_tiers(num_clients, args.lora_tier_ranks,
                                                                        args.lora_rank))
    if args.lora_aggregation == "product":
        algorithm = lora.product_average(algorithm)
    return algorithm


def aggregator(args: Settings):
    """The aggregator ``--lora-aggregation product`` needs (every client's adapters kept), else None."""
    if args.lora_aggregation != "product":
        return None
    from jaxqfl import lora

    return lora.stacked()


def summary_fields(args: Settings, model, num_params: int) -> dict:
    """``summary.json``'s LoRA record: adapter and base parameter counts and the base's stored bytes."""
    if args.lora_rank is None:
        return {"init_from": args.init_from} if args.init_from is not None else {}
    from jaxqfl.lora import base_quant

    return {"init_from": args.init_from, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha or args.lora_rank,
            "lora_tier_ranks": list(args.lora_tier_ranks) if args.lora_tier_ranks else None,
            "lora_aggregation": args.lora_aggregation or "fedit",
            "base_quant": args.base_quant or "none", "adapter_params": num_params,
            "base_params": base_quant.num_base_params(model.frozen), "base_bytes": base_quant.base_bytes(model.frozen)}


def summary_line(s: dict) -> str:
    """The printed summary's LoRA line ('' for other runs)."""
    if s.get("lora_rank") is None:
        return ""
    tiers = f", tier ranks {','.join(map(str, s['lora_tier_ranks']))}" if s.get("lora_tier_ranks") else ""
    return (f"  LoRA             rank {s['lora_rank']}{tiers}: {s['adapter_params']:,} adapter parameters on a "
            f"{'float32' if s['base_quant'] == 'none' else s['base_quant']} base of {s['base_params']:,} "
            f"({s['base_bytes'] / 1e6:,.2f} MB, held once per "
            f"device); merged model in {MERGED_PARAMS}")
