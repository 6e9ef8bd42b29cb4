"""The zoo's sequence models learn the fortunes corpus (real English text) below the byte-unigram entropy.

Reference: the empirical byte entropy of the held-out text, ``-sum_b p_b log2 p_b``
with ``p`` the byte frequencies of the test targets themselves -- the best any
unigram (context-free) model can do on that text, fitted in hindsight (about
4.8 bits per character). A model below it has learnt context.
"""
import json
import math

import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models, tasks
from jaxqfl.cli.main import main
from jaxqfl.data.text import load_text
from jaxqfl.engine.schedule import LocalSchedule

CONTEXT = 32


def _heldout_unigram_bits(population) -> float:
    t = population.y_test[population.y_test >= 0]
    p = np.bincount(t, minlength=256) / t.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@pytest.mark.slow
def test_transformer_from_the_cli_learns_fortunes_below_the_unigram(tmp_path, fortunes_path):
    out = tmp_path / "run"
    rc = main(["run", "--dataset", "text", "--data-path", str(fortunes_path), "--model", "transformer",
               "--transformer-width", "32", "--transformer-depth", "1", "--transformer-heads", "2",
               "--context", str(CONTEXT), "--rounds", "8", "--eval-every", "4", "--cohort-size", "8",
               "--local-steps", "10", "--batch-size", "16", "--client-lr", "0.5", "--devices", "1",
               "--chunk-size", "8", "--out", str(out), "--no-progress"])
    assert rc == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    last = records[-1]
    assert summary["task"] == "next-token" and summary["num_clients"] == 40  # one client per topic file
    assert summary["final_bits_per_char"] == last["test_bits_per_char"]
    assert summary["final_perplexity"] == pytest.approx(math.exp(last["test_loss"]), rel=1e-9)
    assert summary["final_bits_per_char"] == pytest.approx(last["test_loss"] / math.log(2), rel=1e-9)
    assert 0 < summary["final_accuracy"] < 1
    reference = _heldout_unigram_bits(load_text(fortunes_path, CONTEXT))
    assert 4.5 < reference < 5.0
    assert summary["final_bits_per_char"] < reference - 0.2, (summary["final_bits_per_char"], reference)


def _train(population, model, rounds, lr, steps):
    sim = engine.build(population, model, algorithms.fedavg(optax.adam(lr)),
                       LocalSchedule(local_steps=steps, batch_size=16), cohort_size=8, task=tasks.next_token(),
                       num_devices=1, chunk_size=8)
    result = engine.run(sim, rounds=rounds, eval_every=rounds)
    return result.records[-1]["test_bits_per_char"]


@pytest.mark.slow  # ~12 s; the transformer's learning test stays in the default suite
def test_small_char_lstm_learns_fortunes_below_the_unigram(fortunes_path):
    pop = load_text(fortunes_path, CONTEXT)
    bits = _train(pop, models.char_lstm(hidden=64, layers=1), rounds=10, lr=1e-2, steps=20)
    assert bits < _heldout_unigram_bits(pop) - 0.5


@pytest.mark.slow
def test_mcmahan_char_lstm_learns_fortunes_below_the_unigram(fortunes_path):
    """The paper's model: embedding 8, 2 x 256 LSTM, context 80."""
    pop = load_text(fortunes_path, 80)
    bits = _train(pop, models.char_lstm(), rounds=10, lr=1e-2, steps=10)
    assert bits < _heldout_unigram_bits(pop) - 0.5
