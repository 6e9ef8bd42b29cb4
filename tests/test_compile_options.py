"""Every program jaxqfl compiles takes the same XLA options (issue 25): ``jaxqfl.compile_options``.

Every ``jax.jit`` of the library goes through ``compile_options.jit`` (a program compared bit for bit with
another must compile alike); the options reach XLA (a program of the ``jit`` carries them, a plain one does
not); an XLA that lacks an option leaves jaxqfl on its defaults instead of failing; decorating a function
starts no backend (the command line sets the host's device count before JAX starts).
"""
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import compile_options

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the two programs that stand for what jaxqfl is compared with: XLA's defaults, as a user's own code gets them
PLAIN_JIT_ALLOWED = {"jaxqfl/bench/reference.py", "jaxqfl/bench/machine.py"}


def test_every_jit_of_the_library_goes_through_compile_options():
    offenders = []
    for path in sorted((ROOT / "jaxqfl").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in PLAIN_JIT_ALLOWED or rel == "jaxqfl/compile_options.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bjax\.jit\b|^\s*from jax import .*\bjit\b", line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []


def _compile_args(lowered) -> dict:
    return dict(lowered._lowering._compiler_options_kvs)  # what Lowered.compile() hands XLA (JAX 0.10)


def test_the_options_reach_the_compiler_and_a_plain_jit_is_left_alone():
    def f(x):
        return jnp.tanh(x) * 2.0 + 1.0

    x = np.linspace(-3, 3, 64, dtype=np.float32)
    ours = compile_options.jit(f).lower(x)
    plain = jax.jit(f).lower(x)
    assert compile_options.options() == compile_options.OPTIONS  # this jaxlib has the option
    assert _compile_args(ours) == compile_options.OPTIONS and _compile_args(plain) == {}
    np.testing.assert_array_equal(np.asarray(ours.compile()(x)), np.asarray(compile_options.jit(f)(x)))


def test_an_xla_without_the_option_compiles_with_its_defaults(monkeypatch):
    monkeypatch.setattr(compile_options, "OPTIONS", {"xla_no_such_option_in_any_xla": True})
    monkeypatch.setattr(compile_options, "_checked", None)
    assert compile_options.options() == {}
    assert int(compile_options.jit(lambda x: x * 3)(np.int32(2))) == 6
    monkeypatch.setattr(compile_options, "_checked", None)  # the next test checks the real option again


def test_decorating_starts_no_backend():
    code = ("import jaxqfl.engine.driver, jaxqfl.quant.integer, jaxqfl.algorithms.kmeans_seeding\n"
            "from jax._src import xla_bridge\n"
            "print(len(xla_bridge._backends))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "0", out.stderr


def test_a_jit_called_inside_another_trace_becomes_part_of_that_program():
    inner = compile_options.jit(lambda x: jnp.sin(x) * 2.0)
    x = np.linspace(0, 1, 8, dtype=np.float32)
    assert jax.eval_shape(inner, x).shape == (8,)
    outer = compile_options.jit(lambda x: inner(x) + 1.0)
    np.testing.assert_allclose(np.asarray(outer(x)), np.sin(x) * 2.0 + 1.0, rtol=1e-6)
