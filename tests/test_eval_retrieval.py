"""ECG <-> report retrieval: ranks and Recall@K on toy sets with known answers, and the task
end to end through evaluate on the quickstart's converted sample."""

import json

import numpy as np
import pytest

from cgdmer_jax import inference
from cgdmer_jax.evaluators import retrieval
from cgdmer_jax.evaluators import runner


def _unit(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_ranks_on_a_toy_set_with_known_answers():
  # Three candidates on the unit circle; each query sits closest to one of them.
  angles = np.deg2rad([0.0, 90.0, 180.0])
  cands = _unit(np.stack([np.cos(angles), np.sin(angles)], 1))
  # queries near candidate 0, 1, 2 and one near candidate 2 whose correct answer is 1.
  q = _unit([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.1], [-1.0, -0.05]])
  truth = np.array([0, 1, 2, 1])
  r = retrieval.ranks(q, cands, lambda i: truth[i][:, None] == np.arange(3))
  # The fourth query scores cand 2 (-1*-1=1) > cand 1 (-0.05) > cand 0 (-1): rank 2.
  np.testing.assert_array_equal(r, [1, 1, 1, 2])
  s = retrieval.summarize(r, candidates=3, resamples=50, seed=0)
  assert s["recall@1"]["value"] == pytest.approx(0.75)
  assert s["recall@5"]["value"] == 1.0 and s["median_rank"]["value"] == 1.0
  assert s["mean_rank"]["value"] == pytest.approx(1.25)
  assert s["chance@1"] == pytest.approx(1 / 3) and s["chance@5"] == 1.0
  lo, hi = s["recall@1"]["interval"]
  assert 0 <= lo <= 0.75 <= hi <= 1


def test_ties_count_against_the_model_and_duplicates_are_equally_correct():
  const = np.ones((4, 2)) / np.sqrt(2)
  # A constant embedding: every wrong candidate ties with the correct one -> last rank.
  r = retrieval.ranks(const, const, lambda i: i[:, None] == np.arange(4))
  np.testing.assert_array_equal(r, [4, 4, 4, 4])
  # Two candidates are correct for the query: the better of them counts.
  q = _unit([[1.0, 0.0]])
  c = _unit([[0.0, 1.0], [1.0, 0.2], [1.0, 0.0], [-1.0, 0.0]])
  r = retrieval.ranks(q, c, lambda i: np.array([[True, False, False, True]]))
  np.testing.assert_array_equal(r, [3])  # two wrong candidates score higher than cand 0
  with pytest.raises(ValueError, match="no correct candidate"):
    retrieval.ranks(q, c, lambda i: np.zeros((1, 4), bool))


def test_weighted_median_of_ranks():
  ranks = np.array([1, 5, 2, 9])
  counts = np.array([[1, 1, 1, 1], [3, 0, 0, 1], [0, 0, 0, 4]])
  np.testing.assert_array_equal(retrieval._weighted_median(ranks, counts), [2, 1, 9])


def test_retrieval_through_evaluate_on_the_quickstart_sample(quick, embedded_data, tmp_path):
  enc = inference.load(quick["pretrain"])
  res = retrieval.evaluate(enc, quick["data"], "val", resamples=50, progress=False)
  e2r, r2e = res["ecg_to_report"], res["report_to_ecg"]
  assert e2r["queries"] == res["records"] and r2e["queries"] == res["distinct_reports"]
  assert e2r["candidates"] == res["distinct_reports"] and r2e["candidates"] == res["records"]
  assert 0 < res["distinct_reports"] <= res["records"] <= 72
  for d in (e2r, r2e):
    recalls = [d[f"recall@{k}"]["value"] for k in retrieval.KS]
    assert recalls == sorted(recalls) and 0 <= recalls[0] and recalls[-1] <= 1
    assert 1 <= d["median_rank"]["value"] <= d["candidates"]
  out = tmp_path / "eval"
  runner.evaluate_models([str(quick["pretrain"])], task_names=["retrieval"], fractions=[1.0],
                         data_root=embedded_data, out=str(out), retrieval_data=quick["data"],
                         protocol=runner.Protocol(split="val", resamples=50), progress=False)
  summary = (out / "summary.md").read_text()
  assert "ECG → report" in summary and "report → ECG" in summary
  stored = json.loads((out / quick["pretrain"].name / "results.json").read_text())
  assert stored["retrieval"]["ecg_to_report"]["recall@1"] == e2r["recall@1"]


def test_the_retrieval_task_needs_its_data(embedded_data):
  with pytest.raises(ValueError, match="--retrieval_data"):
    runner.evaluate_models(["x"], task_names=["retrieval"], fractions=[1.0],
                           data_root=embedded_data)


def test_a_dataset_at_another_rate_is_refused(quick):
  enc = inference.load(quick["pretrain"])
  enc.fs = 250
  with pytest.raises(ValueError, match="--fs=250"):
    retrieval.evaluate(enc, quick["data"], "val", progress=False)
