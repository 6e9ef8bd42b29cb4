"""Interrupt a CLI run with a real signal while a checkpoint is written, resume it, and run it through once.

Shared by the resume tests of sweeps and k-means runs: the signal goes to this
process right after ``checkpoint.save`` wrote step ``at_step``, so the run's own
handler (``jaxqfl.cli.interrupts``) stops it at the end of that block.
"""
import os


def cut_resume_and_full(root, argv, *, at_step: int, sig, inspect):
    """``(cut folder, full folder, (rc cut, rc resume, rc full), inspect(cut) before the resume)``."""
    from jaxqfl.cli.main import main
    from jaxqfl.engine import checkpoint

    cut, full = root / "cut", root / "full"
    real_save = checkpoint.save

    def save_then_signal(directory, state, meta, **kw):
        step = real_save(directory, state, meta, **kw)
        if step == at_step:
            os.kill(os.getpid(), sig)
        return step

    checkpoint.save = save_then_signal
    try:
        rc_cut = main(["run", *argv, "--checkpoint-every", "2", "--out", str(cut)])
    finally:
        checkpoint.save = real_save
    stopped = inspect(cut)
    rc_resume = main(["run", "--resume", str(cut)])
    rc_full = main(["run", "--config", str(cut / "config.toml"), "--out", str(full)])
    return cut, full, (rc_cut, rc_resume, rc_full), stopped


def back_to_checkpoint(run, dest, step: int):
    """``dest``: a copy of the finished ``run`` folder as a run killed right after writing its checkpoint ``step``
    would have left it (later checkpoints and the final model gone), ready for ``--resume``."""
    import shutil

    shutil.copytree(run, dest)
    for later in (dest / "checkpoints").iterdir():
        if later.name.isdigit() and int(later.name) > step:
            shutil.rmtree(later)
    (dest / "final_params.msgpack").unlink()
    return dest


def rewrite_record(run, step: int, **config):
    """Change the config held in checkpoint ``step``'s record of ``run`` (and its fingerprint) as an earlier
    version that wrote those values would have: how a test makes an old run folder."""
    import json

    from jaxqfl.experiment.run_folder import fingerprint

    record = run / "checkpoints" / str(step) / "meta" / "metadata"
    meta = json.loads(record.read_text())
    meta["config"].update(config)
    meta["fingerprint"] = fingerprint(meta["config"])
    record.write_text(json.dumps(meta))
