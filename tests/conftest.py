"""Test configuration: eight virtual CPU devices so the multi-device path runs in CI.

XLA reads ``XLA_FLAGS`` once, when the backend starts, so this must run before
anything imports ``jax`` -- pytest imports conftest.py first.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Chunk-size tuning costs a few compilations per build: off in tests unless a test asks for it
# (engine.build(..., autotune=True)); its cache goes to a fresh folder, never the user's ~/.cache.
os.environ["JAXQFL_AUTOTUNE"] = "off"
os.environ["JAXQFL_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxqfl-test-cache-")
# One persistent XLA compilation cache for the session, shared with the CLI subprocesses the tests start
# (they inherit the environment): a program compiled by one test or process is loaded by the next. It
# changes no result, and compilation counts are unchanged (jaxqfl.engine.compilations counts loads too).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxqfl-test-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402

import pytest  # noqa: E402

MNIST_PATH = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist" / "mnist.npz"
FORTUNES_PATH = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fortunes"


@pytest.fixture(scope="session")
def mnist_path():
    if not MNIST_PATH.exists():
        pytest.skip(f"MNIST file not found at {MNIST_PATH}")
    return MNIST_PATH


@pytest.fixture(scope="session")
def fortunes_path():
    if not (FORTUNES_PATH / "cookie.txt").exists():
        pytest.skip(f"the fortunes corpus was not found at {FORTUNES_PATH}")
    return FORTUNES_PATH
