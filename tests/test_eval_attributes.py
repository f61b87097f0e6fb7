"""Attribute tasks (sex, age, recording noise and drift, device) read from PTB-XL's table."""

import numpy as np
import pandas as pd
import pytest

from cgdmer_jax.evaluators import attributes
from cgdmer_jax.evaluators import baselines
from cgdmer_jax.evaluators import runner
from cgdmer_jax.evaluators import tasks


def _frame():
  return pd.DataFrame({
      "sex": [0, 1, "x", None, 1],
      "age": [45, 55.0, "", 70, "old"],
      "static_noise": [None, "  ", ", I-AVF", None, None],
      "burst_noise": [None, None, None, "v1", None],
      "baseline_drift": [" , II", None, None, None, ""],
      "device": ["CS-12   E", "AT-6 C 5.5", "XYZ 1", None, "CS100    3"],
  })


def test_labels_keep_only_rows_whose_field_parses():
  f = _frame()
  keep, y = attributes.labels("ptbxl_sex", f)
  assert keep.tolist() == [True, True, False, False, True]
  assert y.tolist() == [[1, 0], [0, 1], [0, 1]]
  keep, y = attributes.labels("ptbxl_age", f)
  assert keep.tolist() == [True, True, False, True, False]
  assert y.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
  keep, y = attributes.labels("ptbxl_signal", f)  # an empty annotation is "none noted"
  assert keep.all() and y.tolist() == [[0, 1], [0, 0], [1, 0], [1, 0], [0, 0]]
  keep, y = attributes.labels("ptbxl_device", f)
  assert keep.tolist() == [True, True, True, False, True]
  assert [attributes.CLASSES["ptbxl_device"][j] if r.any() else None
          for r, j in zip(y, y.argmax(1))] == ["CS-12", "AT-6", None, "CS100"]


def test_bad_tables_stop_with_one_line(tmp_path):
  f = _frame().assign(strat_fold=[1, 9, 10, 2, 11], filename_lr="a", filename_hr="b")
  f.to_csv(tmp_path / "db.csv", index=False)
  with pytest.raises(ValueError, match="strat_fold of 1 rows is not 1-10"):
    attributes.read_splits("ptbxl_sex", tmp_path / "db.csv")
  f.drop(columns=["device"]).assign(strat_fold=1).to_csv(tmp_path / "db.csv", index=False)
  with pytest.raises(ValueError, match=r"columns \['device'\] missing"):
    attributes.read_splits("ptbxl_device", tmp_path / "db.csv")
  with pytest.raises(ValueError, match="unknown attribute task"):
    attributes.labels("ptbxl_height", f)


def test_splits_follow_the_folds(embedded_data):
  db = pd.read_csv(embedded_data / attributes.TABLE)
  for name, classes in attributes.CLASSES.items():
    splits = tasks.read_labels(name, embedded_data)
    assert tasks.TASKS[name].zero_shot is False
    for split, folds in attributes.FOLDS.items():
      s = splits[split]
      assert s.classes == classes and s.y.shape == (len(s.frame), len(classes))
      assert set(s.frame["strat_fold"]) <= set(folds)
    assert sum(len(s.frame) for s in splits.values()) <= len(db)
  sex = tasks.read_labels("ptbxl_sex", embedded_data)["val"]
  np.testing.assert_array_equal(sex.y[:, 1], sex.frame["sex"].to_numpy() == 1)
  np.testing.assert_array_equal(sex.y.sum(1), 1)


def test_attribute_task_is_probed_without_zero_shot(embedded_data):
  proto = runner.Protocol(split="val", probes=("logreg",), features=("shared",), resamples=50)
  res = runner.evaluate_encoder(baselines.bandpower_encoder(100, 10.0), ["ptbxl_sex"], [1.0],
                                data_root=embedded_data, protocol=proto, progress=False)
  task = res["tasks"]["ptbxl_sex"]
  assert task["classes"] == ["male", "female"] and "no class prompts" in task["zero_shot"]["reason"]
  cell = task["linear_probe"]["logreg"]["shared"]["100"]
  assert cell["classes_scored"] == 2 and 0.0 <= cell["auc"] <= 1.0
  assert cell["interval"][0] <= cell["auc"] <= cell["interval"][1]
