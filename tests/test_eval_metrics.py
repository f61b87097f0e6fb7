"""AUC path, label tables read by name, linear probe and zero-shot scoring."""

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from cgdmer_jax.evaluators import auc
from cgdmer_jax.evaluators import linear_probe
from cgdmer_jax.evaluators import tasks
from cgdmer_jax.evaluators import zero_shot


def test_auc_perfect_reversed_and_single_class_skipped():
  y = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 1], [0, 1, 1]])
  s = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.7, 0.4, 0.5], [0.1, 0.6, 0.2]])
  r = auc.macro_auc(y, s, ["a", "b", "c"])
  assert r.per_class["a"] == 1.0
  assert r.per_class["b"] == 1.0
  assert "c" in r.skipped and "no negative" in r.skipped["c"]
  assert r.macro == 1.0
  rev = auc.macro_auc(y, -s, ["a", "b", "c"])
  assert rev.per_class["a"] == 0.0 and rev.macro == 0.0
  none = auc.macro_auc(np.zeros((3, 1)), np.ones((3, 1)), ["z"])
  assert np.isnan(none.macro) and "no positive" in none.skipped["z"]
  assert none.to_json()["macro_auc"] is None


def test_auc_rejects_bad_shapes_and_nan():
  with pytest.raises(ValueError):
    auc.macro_auc(np.zeros((3, 2)), np.zeros((3, 1)), ["a", "b"])
  with pytest.raises(ValueError):
    auc.macro_auc(np.array([[0], [1]]), np.array([[np.nan], [1.0]]), ["a"])


def _check_sub_class_by_name(root):
  raw = {s: pd.read_csv(root / f"ptbxl/merl_splits/sub_class/ptbxl_sub_class_{s}.csv")
         for s in ("train", "val", "test")}
  # The public tables really are reordered: positional reading would be wrong.
  assert list(raw["train"].columns) != list(raw["val"].columns)
  splits = tasks.read_labels("ptbxl_sub", root)
  classes = splits["train"].classes
  assert len(classes) == 23 and classes == tuple(c for c in raw["train"].columns[6:])
  for s in ("train", "val", "test"):
    for j, c in enumerate(classes):
      np.testing.assert_array_equal(splits[s].y[:, j], raw[s][c].to_numpy())
  # The moved classes land on the right columns in val.
  for c in ("AVB", "RAO/RAE", "ISC"):
    j = classes.index(c)
    assert raw["val"].columns.get_loc(c) != raw["train"].columns.get_loc(c)
    np.testing.assert_array_equal(splits["val"].y[:, j], raw["val"][c].to_numpy())


def test_sub_class_tables_read_by_name_shared(shared_data):
  _check_sub_class_by_name(shared_data)


def test_sub_class_tables_read_by_name_embedded(embedded_data):
  if not (embedded_data / "ptbxl/merl_splits/sub_class").exists():
    pytest.skip("embedded subset has no MERL tables")
  _check_sub_class_by_name(embedded_data)


def test_all_tasks_read(shared_data):
  for name in tasks.TASKS:
    splits = tasks.read_labels(name, shared_data)
    assert len(splits["train"].frame) > 0, name
    for s in splits.values():
      assert s.y.shape == (len(s.frame), len(splits["train"].classes))


def test_label_fraction_matches_merl_protocol():
  idx = linear_probe.label_subset(1000, 0.1)
  assert len(idx) == 100
  want = np.sort(train_test_split(np.arange(1000), train_size=0.1, random_state=42)[0])
  np.testing.assert_array_equal(idx, want)
  assert len(linear_probe.label_subset(1000, 1.0)) == 1000
  assert len(linear_probe.label_subset(20, 0.01)) == 1
  with pytest.raises(ValueError):
    linear_probe.label_subset(10, 0.0)


def test_zero_shot_scores_and_missing_prompts():
  ecg = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
  y = np.array([[1, 0], [0, 1], [1, 0]])
  table = {"A": [1.0, 0.0], "B": [0.0, 2.0]}

  def embed(texts):
    return np.array([table.get(t, [0.5, 0.5]) for t in texts])

  r = zero_shot.evaluate(ecg, y, ["A", "B"], embed, {"A": "A", "B": "B"})
  assert r["macro_auc"] == 1.0 and r["prompts_missing"] == []
  r2 = zero_shot.evaluate(ecg, y, ["A", "C"], embed, {"A": "A"})
  assert r2["prompts_missing"] == ["C"]
