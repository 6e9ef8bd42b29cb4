"""The environment a ``jaxqfl`` subprocess of a test runs in: this checkout first on the path, 8 CPU devices."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def assert_fresh_interpreter_prints_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter that sees only this checkout (no inherited environment) and
    expect it to print ``ok``: what importing a module starts, seen from a process that imported nothing else."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
