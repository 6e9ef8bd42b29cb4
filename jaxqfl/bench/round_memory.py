"""What XLA plans for one compiled round: its argument, output and temporary bytes, by the chunk of clients.

``round_memory(population, model, algorithm, schedule, chunk)`` compiles one
round on one device with ``chunk`` clients vmapped at once (a cohort of one
chunk) and returns XLA's own accounting (``Compiled.memory_analysis()``):
``peak = arguments + outputs + temporaries - aliased``. Two chunks give the
per-client share, ``(peak(c2) - peak(c1)) / (c2 - c1)``, and the fixed part
(the base of a LoRA model, the population): ``tests/test_lora.py`` and
``benchmarks/lora.py`` read it.
"""
from __future__ import annotations

import jax


def round_memory(population, model, algorithm, schedule, chunk: int) -> dict:
    """XLA's byte counts of one round (module docstring)."""
    from jaxqfl.engine.simulation import device_data, setup_round
    from jaxqfl.tasks import default_for

    setup = setup_round(population, model, algorithm, schedule, cohort_size=chunk, aggregator=None,
                        task=default_for(population), num_devices=1, chunk_size=chunk, uplink=None, downlink=None,
                        client_state="replicated", eval_batch_size=64, autotune=False)
    data = device_data(population, setup.mesh, model.frozen)
    m = jax.jit(setup.one_round).lower(setup.abstract_state(), data).compile().memory_analysis()
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "temporaries": int(m.temp_size_in_bytes), "aliased": int(m.alias_size_in_bytes)}
    out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out
