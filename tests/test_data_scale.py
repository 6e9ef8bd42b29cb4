"""Scale: generating 100,000 clients stays within a stated memory bound; ``jaxqfl run --stream`` equals the on-device run."""
import json
import subprocess
import sys

import pytest

from jaxqfl.cli.main import main

#: The bound: peak traced memory while generating <= the population's own bytes + this slack.
#: The slack covers one chunk (CHUNK_ROWS = 131,072 rows of 60 float32 features, their labels' float64
#: logits and gathers) and the client sizes; the population itself (float32 rows, int32 labels) is the rest.
SLACK_BYTES = 128 * 2**20

_PROBE = """
import json, tracemalloc
from jaxqfl.data.synthetic import synthetic
tracemalloc.start()
pop = synthetic(1.0, 1.0, 100_000, seed=0, size_mean=1.0, size_sigma=0.5, min_size=5, max_size=12)
_, peak = tracemalloc.get_traced_memory()
own = sum(a.nbytes for a in (pop.x, pop.y, pop.offsets, pop.counts, pop.x_test, pop.y_test))
print(json.dumps({"peak": peak, "own": own, "clients": pop.num_clients, "rows": pop.num_examples}))
"""


def test_generating_100k_synthetic_clients_stays_within_population_plus_128_mib():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["clients"] == 100_000
    assert r["peak"] <= r["own"] + SLACK_BYTES, r
    # the old generator held K x 60 x 10 float64 client models (480 MB here) and float64 rows at once
    assert r["peak"] < 100_000 * 60 * 10 * 8


@pytest.mark.slow  # two compilations; the engine's own equality is tests/test_streaming.py
def test_cli_stream_equals_the_on_device_run(tmp_path):
    common = ["run", "--num-clients", "50", "--cohort-size", "8", "--rounds", "3", "--eval-every", "2",
              "--local-steps", "2", "--devices", "2", "--max-client-size", "70", "--no-progress"]
    summaries = {}
    for name, extra in (("device", []), ("stream", ["--stream"])):
        assert main([*common, *extra, "--out", str(tmp_path / name)]) == 0
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
        summaries[name]["records"] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
    device, stream = summaries["device"], summaries["stream"]
    assert stream["stream"] and not device["stream"]
    assert [r["round"] for r in stream["records"]] == [r["round"] for r in device["records"]] == [2, 3]
    for a, b in zip(device["records"], stream["records"]):
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
        assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1e-6)
        assert b["uplink_bits_total"] == a["uplink_bits_total"]
