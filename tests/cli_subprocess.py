"""The environment a ``jaxqfl`` subprocess of a test runs in: this checkout first on the path, 8 CPU devices."""
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    return env
