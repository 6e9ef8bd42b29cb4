"""The persistent compilation cache: a repeated run loads its programs and gives identical results."""
import json

import jax

from jaxqfl.cli.main import main
from jaxqfl.engine import compile_cache

ARGS = ["--num-clients", "30", "--cohort-size", "6", "--rounds", "2", "--local-steps", "2", "--devices", "2",
        "--no-progress", "--autotune", "off"]


def test_a_second_identical_run_loads_its_programs_and_equals_the_first(tmp_path):
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:
        assert main(["run", *ARGS, "--out", str(out)]) == 0
    first, second = (json.loads((o / "summary.json").read_text()) for o in outs)
    assert second["compile_cache_hits"] >= 2  # at least the round block and the evaluation program
    assert second["compile_cache_dir"] == jax.config.jax_compilation_cache_dir
    assert (outs[0] / "final_params.msgpack").read_bytes() == (outs[1] / "final_params.msgpack").read_bytes()
    assert first["final_accuracy"] == second["final_accuracy"]


def test_a_cache_the_user_configured_is_kept(tmp_path):
    configured = jax.config.jax_compilation_cache_dir  # the test session's (tests/conftest.py)
    assert configured and str(compile_cache.enable(tmp_path / "mine")) == configured
    assert not (tmp_path / "mine").exists()
