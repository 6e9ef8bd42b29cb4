"""Federated LoRA and QLoRA: low-rank adapters on any model over a frozen, quantized base held once per device.

    lora.adapt(model, base, rank=r, alpha=a, targets=REGEX, base_quant_format="nf4") -> Model
"""
from jaxqfl.lora.adapters import A_NAME, B_NAME, DEFAULT_TARGETS, adapt, adapter_paths, merge
from jaxqfl.lora.ranks import heterogeneous_ranks, rank_tiers, truncate

__all__ = ["A_NAME", "B_NAME", "DEFAULT_TARGETS", "adapt", "adapter_paths", "merge", "heterogeneous_ranks", "rank_tiers", "truncate"]
