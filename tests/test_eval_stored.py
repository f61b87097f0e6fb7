"""A model's evaluation stored beside results.json and loaded again (`evaluate --scored`)."""

import json

import numpy as np
import pytest

from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import cells
from cgdmer_jax.evaluators import report
from cgdmer_jax.evaluators import runner
from cgdmer_jax.evaluators import seeds
from cgdmer_jax.evaluators import stored
from cgdmer_jax.evaluators import summary

CLASSES = ["a", "LAFB/LPFB", "c"]  # class names may hold the path separator


def _result(name, seed, rows=120, signal=2.0, label_seed=0):
  """A model's results on records whose labels come from `label_seed`, scores from `seed`."""
  y = (np.random.default_rng(label_seed).random((rows, 3)) < 0.3).astype(np.int8)
  y[0], y[1] = 1, 0
  s = y * signal + np.random.default_rng(seed).normal(size=y.shape)
  counts = bootstrap.resample_counts(rows)
  return {"model": name, "split": "val",
          "bootstrap": {"resamples": bootstrap.NUM_RESAMPLES, "seed": 0},
          "tasks": {"t": {"_y": y, "_rows": np.arange(rows) + 7, "classes": CLASSES,
                          "zero_shot": cells.score(y, s, CLASSES, counts),
                          "linear_probe": {"logreg": {"shared": {
                              "100": cells.score(y, s + y, CLASSES, counts),
                              "1": cells.no_cell("too few positives")}}}},
                    "empty": {"reason": "no val rows in the label table"}}}


def _write(tmp_path, res):
  folder = tmp_path / res["model"]
  summary.write_results(folder, res)
  return folder


def test_round_trip_restores_every_score_and_pairs_as_the_live_result(tmp_path):
  live = _result("A", seed=1)
  folder = _write(tmp_path, live)
  assert (folder / stored.SCORES_FILE).is_file()
  back = stored.load(folder, split="val", resamples=bootstrap.NUM_RESAMPLES, seed=0)
  t_live, t_back = live["tasks"]["t"], back["tasks"]["t"]
  np.testing.assert_array_equal(t_back["_y"], t_live["_y"])
  np.testing.assert_array_equal(t_back["_rows"], t_live["_rows"])
  for path in (("zero_shot",), ("linear_probe", "logreg", "shared", "100")):
    a, b = t_live, t_back
    for k in path:
      a, b = a[k], b[k]
    assert b["_scores"].dtype == np.float64
    np.testing.assert_array_equal(b["_scores"], a["_scores"])
    assert b["_columns"] == a["_columns"] and b["auc"] == pytest.approx(a["auc"])
  assert t_back["linear_probe"]["logreg"]["shared"]["1"]["auc"] is None
  # Stored and live are the same model to every comparison and group.
  other = _result("B", seed=2)
  assert report.compare(back, other) == report.compare(live, other)
  assert report.compare(back, live)["tasks"]["t"]["zero-shot"]["interval"] == [0.0, 0.0]
  g_live = seeds.group_result("g", [live, other])["tasks"]["t"]["zero_shot"]
  g_back = seeds.group_result("g", [back, other])["tasks"]["t"]["zero_shot"]
  assert g_back["auc"] == g_live["auc"] and g_back["interval"] == g_live["interval"]


def test_a_group_writes_no_scores_and_its_folder_is_refused(tmp_path):
  g = seeds.group_result("g", [_result("A", 1), _result("B", 2)])
  folder = tmp_path / "g"
  summary.write_results(folder, g)
  assert not (folder / stored.SCORES_FILE).exists()
  np.savez(folder / stored.SCORES_FILE, x=np.zeros(1))
  with pytest.raises(ValueError, match="seed group"):
    stored.load(folder)


@pytest.mark.parametrize("kw, match", [
    ({"split": "test"}, "split 'val'"), ({"resamples": 200}, "bootstrap resamples"),
    ({"seed": 3}, "bootstrap seed")])
def test_another_protocol_is_refused(tmp_path, kw, match):
  folder = _write(tmp_path, _result("A", 1))
  with pytest.raises(ValueError, match=match):
    stored.load(folder, **kw)


def test_missing_damaged_or_incomplete_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no results.json"):
    stored.load(tmp_path / "nothing")
  folder = _write(tmp_path, _result("A", 1))
  npz = folder / stored.SCORES_FILE
  good = dict(np.load(npz, allow_pickle=False))
  # A cell's scores left out.
  np.savez(npz, **{k: v for k, v in good.items() if "zero_shot/_scores" not in k})
  with pytest.raises(ValueError, match="lacks the scores of t zero-shot"):
    stored.load(folder)
  # Labels and rows that do not line up.
  np.savez(npz, **{**good, "tasks/t/_rows": good["tasks/t/_rows"][:-1]})
  with pytest.raises(ValueError, match="labels for"):
    stored.load(folder)
  # An array with no cell in results.json.
  np.savez(npz, **{**good, "tasks/u/zero_shot/_scores": np.zeros(3)})
  with pytest.raises(ValueError, match="has no cell"):
    stored.load(folder)
  # Not an npz; an object array (never unpickled).
  npz.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="cannot be read"):
    stored.load(folder)
  np.savez(npz, **{**good, "tasks/t/_y": np.array([{"x": 1}], dtype=object)})
  with pytest.raises(ValueError, match="cannot be read"):
    stored.load(folder)
  (folder / stored.RESULTS_FILE).write_text("{")
  with pytest.raises(ValueError, match="not valid JSON"):
    stored.load(folder)


def test_models_scored_on_different_labels_are_not_paired(tmp_path):
  a, b = _result("A", 1), _result("B", 2, label_seed=5)  # the same rows, other labels
  with pytest.raises(ValueError, match="disagree on the labels"):
    report.compare(a, b)
  with pytest.raises(ValueError, match="disagree on the labels"):
    seeds.group_result("g", [a, b])


def test_evaluate_models_from_stored_folders_alone(tmp_path):
  a, b = _result("A", 1), _result("B", 1, signal=1.0)  # same labels, weaker scores
  folders = [str(_write(tmp_path / "first", r)) for r in (a, b)]
  out = tmp_path / "again"
  results = runner.evaluate_models(
      [], scored=folders, task_names=["ptbxl_super"], fractions=[1.0], data_root=None,
      out=out, protocol=runner.Protocol(split="val"), groups=["g=A+B"], compare=[("A", "B")])
  assert [r["model"] for r in results] == ["A", "B", "g"]
  comp = json.loads((out / "comparisons.json").read_text())[0]["tasks"]["t"]["zero-shot"]
  want = report.compare(a, b)["tasks"]["t"]["zero-shot"]
  assert comp["difference"] == pytest.approx(want["difference"]) and comp["difference"] > 0
  assert comp["interval"] == pytest.approx(want["interval"])
  assert (out / "A" / stored.SCORES_FILE).is_file() and "| g | zero-shot |" in (
      out / "summary.md").read_text()
  with pytest.raises(ValueError, match="--out is required"):
    runner.evaluate_models([], scored=folders, task_names=["ptbxl_super"], fractions=[1.0],
                           data_root=None, protocol=runner.Protocol(split="val"))
  with pytest.raises(ValueError, match="need a --workdir"):
    runner.evaluate_models([], scored=folders, task_names=["ptbxl_super"], fractions=[1.0],
                           data_root=None, out=out, baselines=("band_power",),
                           protocol=runner.Protocol(split="val"))
  with pytest.raises(ValueError, match="split 'val'"):
    runner.evaluate_models([], scored=folders, task_names=["ptbxl_super"], fractions=[1.0],
                           data_root=None, out=out)
