"""Every script in ``examples/`` runs as a user runs it (a subprocess, small settings) and prints what it promises.

Parametrised over the folder's ``*.py``: a new example without an entry in ``CASES`` fails here. Each case
gives the script's small settings, the data it needs and a check of its printed output (a property: the robust
rule beats the attacked mean, epsilon is finite and meets its target, 4-bit weights are 8x smaller, ...).
Only ``own_data.py`` (about 5 s) runs by default; the rest are ``slow``.
"""
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
NUMBER = r"([-+]?(?:\d[\d,]*\.?\d*(?:e[-+]?\d+)?|nan|inf))"


def numbers(pattern, out):
    """Every match of ``pattern`` (NUMBER groups) in ``out`` as floats; fails when there is none."""
    found = re.findall(pattern.replace("{N}", NUMBER), out)
    assert found, f"no line matching {pattern!r} in:\n{out}"
    return [tuple(float(v.replace(",", "")) for v in (m if isinstance(m, tuple) else (m,))) for m in found]


def accuracy(name, out):
    """The accuracy on the line that starts (after padding) with ``name:``."""
    (value,), = numbers(rf"(?m)^ *{re.escape(name)}: test accuracy {{N}}", out)
    assert 0.0 <= value <= 1.0, f"{name}: accuracy {value}"
    return value


def check_dp(out):
    private, plain = accuracy("DP-FedAvg", out), accuracy("no privacy", out)
    assert plain > 0.3 and private > 0.3, out  # both learn something in a few rounds
    (eps, delta), = numbers(r"epsilon {N} at delta {N}", out)
    assert math.isfinite(eps) and eps > 0 and abs(eps - 8.0) < 0.05, out  # calibrated to the --epsilon target
    assert delta == pytest.approx(200 ** -1.1, rel=1e-2)


def check_secure(out):
    rows = {name: numbers(rf"{name}\W.*?test accuracy {{N}}, uplink {{N}} kbit", out)[0]
            for name in ("float mean", "integer mean", "SecAgg")}
    assert all(math.isfinite(a) and 0 <= a <= 1 for a, _ in rows.values())
    assert rows["integer mean"][1] <= rows["float mean"][1] / 3.9  # 8-bit codes against 32-bit floats
    assert rows["SecAgg"][1] > rows["integer mean"][1]  # masked words are wider, plus keys and shares
    (survivors, cohort, failed), = numbers(r"survivors {N}/{N} a round, {N} failed", out)
    assert 0 < survivors <= cohort and failed == 0


def check_robust(out):
    attacked = accuracy("mean", out)
    assert accuracy("mean, no attack", out) > attacked + 0.1
    for rule in ("median", "trimmed mean", "krum"):
        assert accuracy(rule, out) > attacked + 0.1, (rule, out)
    counts = numbers(r"\({N} malicious clients a round\)", out)
    assert len(counts) == 4 and all(0 < c < 20 for c, in counts), out  # 20% of 100 clients, cohorts of 20


def check_scaffold(out):
    for name in ("FedAvg", "SCAFFOLD"):
        (final,), = numbers(rf"(?m)^ *{name}: test accuracy by round .*\(final {{N}},", out)
        assert 0.1 < final <= 1, out  # above chance after a few rounds


def check_qat(out):
    rows = {name: numbers(rf"{name}: test accuracy {{N}}, model {{N}} kB \(float {{N}} kB\), {{N}} MBOPs", out)[0]
            for name in ("none", "w4a8")}
    (acc_f, bytes_f, float_bytes, bops_f), (acc_q, bytes_q, _, bops_q) = rows["none"], rows["w4a8"]
    assert bytes_f == float_bytes and bytes_q < bytes_f / 7  # 4-bit kernels, float biases
    assert bops_f / bops_q == pytest.approx(32.0, rel=0.02)  # (32 x 32) / (4 x 8) per MAC
    assert acc_f > 0.5 and acc_q > 0.5, out


def check_ptq(out):
    (acc_f, bytes_f), = numbers(r"float model: +test accuracy {N}, {N} bytes", out)
    (acc_i, bytes_i), = numbers(r"integer model: test accuracy {N}, {N} bytes", out)
    assert bytes_i < bytes_f / 6
    assert acc_f > 0.5 and acc_i > acc_f - 0.05, out


def check_sweep(out):
    (configs,), = numbers(r"{N} configs x 3 rounds in one program", out)
    assert configs == 4
    rows = numbers(r"\n +{N} +{N} +{N} \+- {N}", out)
    assert [(lr, seeds) for lr, seeds, _, _ in rows] == [(0.01, 2), (0.1, 2)]
    assert all(0 < m <= 1 and 0 <= s < 0.5 for _, _, m, s in rows)


def check_kmeans(out):
    (seed_inertia, *_), = numbers(r"k-means\+\+ on \d+ sampled rows: inertia {N}, ARI {N}, NMI {N}", out)
    (inertia, ari, nmi), = numbers(r"Lloyd rounds: inertia {N}, ARI {N}, NMI {N}", out)
    assert inertia <= seed_inertia * 1.001 and ari > 0.9 and nmi > 0.9, out


def check_own_data(out):
    assert "10 clients" in out and "4 classes, task classification" in out, out
    (acc, majority), = numbers(r"test accuracy {N} on \d+ held-out rows \(majority class {N}\)", out)
    assert acc > majority, out


def check_custom_algorithm(out):
    assert accuracy("FedAvg", out) > 0.1 and accuracy("persistent momentum", out) > 0.1, out


def check_custom_aggregator(out):
    accuracy("mean under attack", out)
    (acc, kept), = numbers(r"norm filter under attack: test accuracy {N}, kept {N}%", out)
    assert 0 <= acc <= 1 and 50 <= kept < 100, out  # drops the 10x updates, keeps most honest ones


def check_fedavg(out):
    assert accuracy("FedAvg", out) > 0.2 and accuracy("FedAdam", out) > 0.1, out  # chance is 0.1


def check_plain(out):
    (acc, loss), = numbers(r"test accuracy {N}, test loss {N}", out)
    assert 0.05 < acc <= 1 and math.isfinite(loss), out


def check_pretrain(out, tmp):
    assert (tmp / "out" / "base.msgpack").stat().st_size > 0 and "fine-tune it federated" in out, out


# script: (arguments, data it needs: None, "mnist" or "fortunes", check(out[, tmp]), runs by default)
MNIST = ["--data-path", "{mnist}"]
def check_experiment(out):
    assert "refused as expected: --mu applies to --algorithm fedprox, got --algorithm fedavg" in out, out
    (acc, rounds, status), = numbers(r"test accuracy {N} after {N} rounds, status {N}", out)
    assert 0.0 <= acc <= 1.0 and rounds == 4 and status == 0, out
    assert "bit-identical final model: True" in out, out


CASES = {
    "experiment.py": (["--rounds", "4", "--num-clients", "40", "--out", "{tmp}/exp"], check_experiment),
    "dp.py": (MNIST + ["--rounds", "3", "--num-clients", "200", "--cohort-size", "20", "--epsilon", "8"], check_dp),
    "secure_aggregation.py": (MNIST + ["--rounds", "3", "--num-clients", "100", "--cohort-size", "10"], check_secure),
    "robust_under_attack.py": (MNIST + ["--rounds", "5", "--num-clients", "100"], check_robust),
    "scaffold_vs_fedavg.py": (MNIST + ["--rounds", "4", "--num-clients", "20", "--cohort-size", "5",
                                       "--local-steps", "5"], check_scaffold),
    "qat.py": (MNIST + ["--rounds", "3", "--num-clients", "20", "--cohort-size", "4", "--presets", "none,w4a8"],
               check_qat),
    "ptq_integer.py": (MNIST + ["--rounds", "3", "--calibration-clients", "4", "--adaround-steps", "10"], check_ptq),
    "sweep.py": (MNIST + ["--rounds", "3", "--seeds", "2", "--lrs", "0.01,0.1"], check_sweep),
    "kmeans.py": (["--rounds", "3", "--num-clients", "100", "--cohort-size", "20", "--clusters", "5"], check_kmeans),
    "own_data.py": (["--rounds", "20", "--num-clients", "10", "--rows", "2000", "--cohort-size", "4"],
                    check_own_data),
    "custom_algorithm.py": (MNIST + ["--rounds", "3"], check_custom_algorithm),
    "custom_aggregator.py": (MNIST + ["--rounds", "5"], check_custom_aggregator),
    "mnist_fedavg.py": (MNIST + ["--rounds", "3"], check_fedavg),
    "plain_function_model.py": (["--rounds", "5"], check_plain),
    "pretrain_transformer.py": (["--fortunes", "{fortunes}", "--out", "{tmp}/out", "--steps", "2", "--batch", "4"],
                                check_pretrain),
}
DEFAULT = {"own_data.py"}  # the one cheap example in the default suite


def run_example(script, args):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.parametrize("script", [pytest.param(s, marks=() if s in DEFAULT else pytest.mark.slow)
                                    for s in EXAMPLES])
def test_example_runs_and_prints_its_result(script, request, tmp_path):
    assert script in CASES, f"examples/{script} has no case in tests/test_examples.py's CASES: add its small settings"
    args, check = CASES[script]
    paths = {"tmp": tmp_path}
    for name in ("mnist", "fortunes"):
        if any("{" + name + "}" in a for a in args):
            paths[name] = request.getfixturevalue(f"{name}_path")
    out = run_example(script, [a.format(**paths) for a in args])
    check(out, tmp_path) if script == "pretrain_transformer.py" else check(out)


def test_every_example_documents_itself_and_takes_rounds():
    """A docstring that says how to run it, an argparse ``--rounds`` (pretraining: ``--steps``), a README row."""
    table = (ROOT / "examples" / "README.md").read_text()
    for script in EXAMPLES:
        text = (ROOT / "examples" / script).read_text()
        assert text.startswith('"""') and f"python examples/{script}" in text.split('"""')[1], script
        assert '"--rounds"' in text or script == "pretrain_transformer.py", script
        assert f"`{script}`" in table, f"examples/README.md has no row for {script}"
