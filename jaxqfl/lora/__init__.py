"""Federated LoRA and QLoRA: low-rank adapters on any model over a frozen, quantized base held once per device.

    lora.adapt(model, base, rank=r, alpha=a, targets=REGEX, base_quant_format="nf4") -> Model   (adapters)
    lora.merge(adapted, adapters, sample_x) -> the original model's params, W + (alpha/r) A B   (adapters)
    lora.full_rank_kernels(adapters) -> the kernels whose rank r >= min(d_in, d_out)             (adapters)
    lora.base_quant: quantize_base / dequantize_base (int8, int4, NF4 with double quantization)
    lora.heterogeneous_ranks(algorithm, client_ranks), lora.rank_tiers(...)                    (ranks: HetLoRA)
    lora.product_average(algorithm) with the lora.stacked() aggregator                         (product_average)

FedIT, averaging A and B separately, is plain FedAvg on the adapters: no wrapper needed.
"""
from jaxqfl.lora.adapters import A_NAME, B_NAME, DEFAULT_TARGETS, adapt, adapter_paths, full_rank_kernels, merge
from jaxqfl.lora.ranks import heterogeneous_ranks, rank_tiers, truncate
from jaxqfl.lora.product_average import product_average, stacked

__all__ = ["A_NAME", "B_NAME", "DEFAULT_TARGETS", "adapt", "adapter_paths", "full_rank_kernels", "merge",
           "product_average", "stacked", "heterogeneous_ranks", "rank_tiers", "truncate"]
