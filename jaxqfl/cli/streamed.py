"""``jaxqfl run --stream``: rounds of ``engine.build_streaming``, evaluated every ``eval_every`` rounds.

The counterpart of ``engine.run`` for a population left on the host: the host
loop runs ``eval_every`` streamed rounds (each round's cohort gathered and put
on the devices while the previous one runs), then evaluates the global model on
the test set (on the devices, as ``engine.run`` does). Returns the same
``RunResult``, so the run's metrics and summary are written the same way.
"""
from __future__ import annotations

import numpy as np

from jaxqfl.engine.driver import RunResult


def run_streamed(sim, *, rounds: int, eval_every: int, seed: int = 0, on_eval=None, progress: bool = False):
    """Run ``rounds`` streamed rounds of ``sim`` (a ``StreamingSimulation``), evaluating every ``eval_every``."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    compile_seconds = sim.compile()
    state = sim.init(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, unit="round", dynamic_ncols=True)
    records, train_seconds, up_total, down_total, done = [], 0.0, 0, 0, 0
    try:
        while done < rounds:
            block = min(eval_every, rounds - done)
            state, metrics, stats = sim.run(state, block)
            train_seconds += stats.seconds
            up_total += sum(int(np.sum(m.uplink_bits, dtype=np.int64)) for m in metrics)
            down_total += sum(int(np.sum(m.downlink_bits, dtype=np.int64)) for m in metrics)
            done += block
            ev = sim.evaluate(state.params)
            rec = {
                "round": done,
                "test_loss": ev["loss"],
                **{f"test_{k}": v for k, v in ev.items() if k != "loss"},
                "train_loss": float(metrics[-1].train_loss),
                "uplink_bits_total": up_total,
                "downlink_bits_total": down_total,
                "seconds": train_seconds,
            }
            records.append(rec)
            if on_eval is not None:
                on_eval(rec)
            if bar is not None:
                bar.set_postfix({"loss": f"{rec['test_loss']:.4f}", "rounds/s": f"{done / max(train_seconds, 1e-9):.2f}"})
                bar.update(block)
    finally:
        if bar is not None:
            bar.close()
    return RunResult(state, records, compile_seconds, train_seconds, rounds, up_total, down_total)
