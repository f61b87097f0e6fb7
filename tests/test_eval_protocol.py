"""Evaluation protocol: label subsets, bootstrap intervals, paired differences, both probes,
"–" cells and the two CSN label readings."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import cells
from cgdmer_jax.evaluators import linear_probe
from cgdmer_jax.evaluators import logreg_probe
from cgdmer_jax.evaluators import records
from cgdmer_jax.evaluators import report
from cgdmer_jax.evaluators import runner
from cgdmer_jax.evaluators import seeds
from cgdmer_jax.evaluators import tasks

# The classes MERL's substring match makes supersets of the truth (AVB -> VB, AFIB -> AF, ...).
CSN_SUPERSETS = ("VB", "AVB", "AF", "ST", "SA", "CR", "2AVB")


def _scored(n, seed=0, classes=3, signal=1.0):
  rng = np.random.default_rng(seed)
  y = (rng.random((n, classes)) < 0.3).astype(np.int8)
  y[0], y[1] = 1, 0  # every class has both labels
  s = y * signal + rng.normal(size=(n, classes))
  return y, s


def _task_data(table_rows, read_rows, y):
  return records.TaskData(classes=("a",), x={}, y={"train": y}, left_out={},
                          rows={"train": np.asarray(read_rows)},
                          table_rows={"train": table_rows})


def test_subset_drawn_on_the_whole_table_ignores_an_unreadable_row(shared_data):
  n = len(pd.read_csv(shared_data / "ptbxl/merl_splits/super_class/ptbxl_super_class_train.csv"))
  drawn = linear_probe.label_subset(n, 0.1)
  bad = int(drawn[3])  # an unreadable record inside the 10 % subset
  all_rows = np.arange(n)
  readable = np.delete(all_rows, bad)
  y = np.zeros((n, 1), np.int8)
  pos_all, info_all = runner._subset(_task_data(n, all_rows, y), 0.1)
  pos_bad, info_bad = runner._subset(_task_data(n, readable, y[readable]), 0.1)
  np.testing.assert_array_equal(all_rows[pos_all], drawn)
  np.testing.assert_array_equal(readable[pos_bad], np.delete(drawn, 3))
  assert info_all["unreadable_dropped"] == 0 and info_bad["unreadable_dropped"] == 1
  assert info_bad["drawn"] == len(drawn) and info_bad["train_rows"] == len(drawn) - 1
  # Drawing over the readable rows instead (the old way) would change many rows, not one.
  old = readable[linear_probe.label_subset(len(readable), 0.1)]
  assert len(set(old) ^ set(drawn)) > 10


def test_weighted_auc_matches_sklearn_with_ties_and_resamples_are_seeded():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 300)
  s = np.round(rng.normal(size=300) + y, 1)  # many ties
  assert bootstrap.weighted_auc(y, s, np.ones((1, 300)))[0] == pytest.approx(
      roc_auc_score(y, s), abs=1e-12)
  counts = bootstrap.resample_counts(300, 50, seed=3)
  assert counts.shape == (50, 300) and np.all(counts.sum(1) == 300)
  np.testing.assert_array_equal(counts, bootstrap.resample_counts(300, 50, seed=3))
  # A weight row is a resample: the AUC of the repeated records.
  idx = np.repeat(np.arange(300), counts[0])
  assert bootstrap.weighted_auc(y, s, counts[:1])[0] == pytest.approx(
      roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_interval_contains_the_point_and_narrows_with_more_records():
  widths = []
  for n in (60, 240, 960):
    y, s = _scored(n)
    cell = cells.score(y, s, ["a", "b", "c"], bootstrap.resample_counts(n))
    lo, hi = cell["interval"]
    assert lo <= cell["auc"] <= hi
    for c, (clo, chi) in cell["per_class_interval"].items():
      assert clo <= cell["per_class"][c] <= chi
    widths.append(hi - lo)
  assert widths[0] > widths[1] > widths[2]


def test_paired_interval_of_a_model_against_itself_is_zero_and_a_better_model_excludes_it():
  y, s = _scored(200)
  counts = bootstrap.resample_counts(200)
  same = bootstrap.paired_interval(y, s, s.copy(), counts)
  assert same["difference"] == 0.0 and same["interval"] == [0.0, 0.0]
  y2, better = _scored(200, signal=3.0)
  worse = better + np.random.default_rng(5).normal(scale=3.0, size=better.shape)
  d = bootstrap.paired_interval(y2, better, worse, counts)
  lo, hi = d["interval"]
  assert 0 < lo <= d["difference"] <= hi


def test_compare_pairs_the_same_records_of_two_models():
  y, s = _scored(120)
  counts = bootstrap.resample_counts(120)
  def result(name, scores):
    return {"model": name, "split": "val", "tasks": {"t": {
        "_y": y, "_rows": np.arange(120),
        "zero_shot": cells.score(y, scores, ["a", "b", "c"], counts)}}}
  c = report.compare(result("A", s), result("B", s))
  assert c["tasks"]["t"]["zero-shot"]["interval"] == [0.0, 0.0]
  assert "| A − B | zero-shot | +0.0 (+0.0–+0.0) |" in report.compare_markdown(c)


def test_logreg_reaches_auc_one_on_separable_features():
  rng = np.random.default_rng(0)
  y = (rng.random((400, 3)) < 0.3).astype(np.int8)
  # Class j is positive exactly when feature j is positive, with a margin; 3 noise features.
  x = np.concatenate([(2 * y - 1) * (1 + rng.random((400, 3))), rng.normal(size=(400, 3))], 1)
  counts = bootstrap.resample_counts(100)
  r = logreg_probe.train_and_score(x[:200], y[:200], x[200:300], y[200:300], x[300:], y[300:],
                                   ["a", "b", "c"], counts)
  assert r["auc"] == 1.0 and r["interval"] == [1.0, 1.0] and r["selection"] == "val"
  assert str(r["C"]) in r["selection_by_c"]
  # Evaluating val itself: C comes from cross-validation on the training rows, not val.
  rv = logreg_probe.train_and_score(x[:200], y[:200], None, None, x[300:], y[300:],
                                    ["a", "b", "c"], counts, split="val")
  assert rv["selection"] == "cv" and rv["auc"] == 1.0


def test_merl_probe_schedule_and_learning():
  # MERL steps MultiStepLR(milestones=[40]) after every batch and after every epoch.
  config = linear_probe.ProbeConfig(epochs=5)
  lr = linear_probe.lr_per_step(config, batches_per_epoch=13)
  calls, want = 0, []
  for _ in range(5):
    for _ in range(13):
      want.append(1e-3 if calls < 40 else 1e-4)
      calls += 1
    calls += 1
  np.testing.assert_allclose(lr.ravel(), want, rtol=1e-6)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 8)).astype(np.float32)
  y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.5], axis=1).astype(np.int8)
  counts = bootstrap.resample_counts(50)
  fast = linear_probe.ProbeConfig(epochs=20, lr=1e-2, lr_drop_at=None)
  r = linear_probe.train_and_score(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:],
                                   ["a", "b"], counts, fast)
  assert r["auc"] > 0.95 and r["selection"] == "val"
  assert r["auc_max_over_epochs"] >= r["auc"]
  assert r["interval"][0] <= r["auc"] <= r["interval"][1]
  rv = linear_probe.train_and_score(x[:200], y[:200], None, None, x[250:], y[250:], ["a", "b"],
                                    counts, linear_probe.ProbeConfig(epochs=3), split="val")
  assert rv["selection"] == "last_epoch" and rv["best_epoch"] == 3


def test_dash_cells_with_reasons_instead_of_fifty():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4))
  y = np.zeros((40, 3), np.int8)
  y[::2, 0] = 1  # only class a has positives among the training rows
  y_test = np.tile(np.array([[1, 1, 0], [0, 0, 1]], np.int8), (10, 1))
  counts = bootstrap.resample_counts(20)
  for train in (linear_probe.train_and_score, logreg_probe.train_and_score):
    r = train(x, y, x[:20], y_test, x[:20], y_test, ["a", "b", "c"], counts)
    assert r["auc"] is None and "1 class(es) can be trained" in r["reason"]
    assert set(r["untrained"]) == {"b", "c"}
  # Zero-shot with one scorable class in the evaluated split.
  zs = cells.score(y_test[:, :1].repeat(3, 1) * [1, 0, 0], rng.normal(size=(20, 3)),
                   ["a", "b", "c"], counts, split="val")
  assert zs["auc"] is None and "1 class(es) with a positive and a negative" in zs["reason"]
  res = {"model": "m", "split": "val", "fractions": [1.0],
         "tasks": {"t": {"zero_shot": zs, "linear_probe": {"merl": {"concat": {"100": r}}}}}}
  md = report.markdown([res])
  assert "| m | zero-shot | – |" in md and "| m | linear probe 100% merl concat | – |" in md
  assert "50.0" not in md and "1 class(es) can be trained" in md


def test_expand_csn_readings():
  assert runner.expand_csn(["ptbxl_super", "csn"], ["merl", "exact"]) == [
      "ptbxl_super", "csn", "csn_exact"]
  assert runner.expand_csn(["csn"], ["exact"]) == ["csn_exact"]
  with pytest.raises(ValueError):
    runner.expand_csn(["csn"], ["substring"])


def _check_csn_readings(root):
  table = pd.read_csv(root / "csn/labels_chapman_merl.csv")
  merl = tasks.read_labels("csn", root)
  exact = tasks.read_labels("csn_exact", root)
  classes = merl["train"].classes
  assert exact["train"].classes == classes and len(classes) == 38
  for split in tasks.SPLITS:
    ym, ye = merl[split].y, exact[split].y
    tokens = [[t.strip() for t in d.split(",")] for d in merl[split].frame["diagnose"]]
    for j, c in enumerate(classes):
      if c in CSN_SUPERSETS:
        assert np.all(ye[:, j] <= ym[:, j]), (split, c)  # exact positives within MERL's
        # MERL's positive without the token: a longer token contains the class name.
        extra = [i for i, toks in enumerate(tokens)
                 if c not in toks and any(c in t for t in toks)]
        assert int(ym[:, j].sum() - ye[:, j].sum()) == len(extra), (split, c)
      else:
        np.testing.assert_array_equal(ye[:, j], ym[:, j], err_msg=f"{split} {c}")
  return tasks.label_positives("csn", root), table


def test_csn_exact_labels_are_subsets_of_merl_shared(shared_data):
  counts, table = _check_csn_readings(shared_data)
  assert len(table) == 27
  assert (counts["merl"]["AF"], counts["exact"]["AF"]) == (4, 3)
  assert (counts["merl"]["ST"], counts["exact"]["ST"]) == (7, 6)
  differ = {c for c in counts["merl"] if counts["merl"][c] != counts["exact"][c]}
  assert differ == {"AF", "ST"}


def test_csn_exact_labels_embedded(embedded_data):
  _check_csn_readings(embedded_data)


def test_compare_flag_takes_pairs():
  assert runner.compare_pairs(["A", "B"]) == [("A", "B")]
  assert runner.compare_pairs(["A", "B", "A", "C"]) == [("A", "B"), ("A", "C")]
  assert runner.compare_pairs(["A@10", "B@100"]) == [("A@10", "B@100")]
  for bad in ([], ["A"], ["A", "B", "C"]):
    with pytest.raises(ValueError, match="pairs of model names"):
      runner.compare_pairs(bad)
  for bad in ("A@ten", "A@0", "A@150", "@10"):
    with pytest.raises(ValueError, match="--compare operand"):
      runner.compare_pairs([bad, "B"])
  assert report.split_operand("run@1.0") == ("run", "1")
  assert report.split_operand("a@b@10") == ("a@b", "10")
  assert report.split_operand("run") == ("run", None)


def _probe_result(name, y, s_by_pct):
  counts = bootstrap.resample_counts(len(y))
  return {"model": name, "split": "val", "tasks": {"t": {
      "_y": y, "_rows": np.arange(len(y)),
      "zero_shot": cells.score(y, s_by_pct["100"], ["a", "b", "c"], counts),
      "linear_probe": {"logreg": {"shared": {
          pct: cells.score(y, s, ["a", "b", "c"], counts) for pct, s in s_by_pct.items()}}}}}}


def test_compare_across_label_fractions_pairs_the_named_cells():
  y, strong = _scored(300, signal=3.0)
  weak = strong + np.random.default_rng(3).normal(scale=3.0, size=strong.shape)
  # Model A is strong at 10 % and weak at 100 %; B the reverse.
  a = _probe_result("A", y, {"10": strong, "100": weak})
  b = _probe_result("B", y, {"10": weak, "100": strong})
  across = report.compare(a, b, percentages=("10", "100"))
  assert across["a"] == "A@10" and across["b"] == "B@100"
  rows = across["tasks"]["t"]
  assert list(rows) == ["linear probe 10% vs 100% logreg shared"]  # no zero-shot row
  assert rows["linear probe 10% vs 100% logreg shared"]["interval"] == [0.0, 0.0]
  # The same cell on both sides differs: A@100 against B@100 is weak minus strong.
  same = report.compare(a, b, percentages=("100", None))["tasks"]["t"]
  assert list(same) == ["linear probe 100% logreg shared"]
  assert same["linear probe 100% logreg shared"]["interval"][1] < 0
  want = bootstrap.paired_interval(y, weak, strong, bootstrap.resample_counts(300))
  assert same["linear probe 100% logreg shared"]["difference"] == pytest.approx(
      want["difference"])
  assert "| A@10 − B@100 | linear probe 10% vs 100% logreg shared |" in (
      report.compare_markdown(across))


def test_compare_percentage_must_be_evaluated(tmp_path):
  with pytest.raises(ValueError, match=r"percentage 50 is not among the evaluated"):
    runner.evaluate_models([str(tmp_path / "run")], task_names=["ptbxl_super"],
                           fractions=[0.1, 1.0], data_root=str(tmp_path),
                           compare=[("run@50", "band_power@100")])


def _result(name, y, s, rows=None):
  rows = np.arange(len(y)) if rows is None else np.asarray(rows)
  counts = bootstrap.resample_counts(len(rows))
  return {"model": name, "split": "val", "tasks": {"t": {
      "_y": y[rows], "_rows": rows,
      "zero_shot": cells.score(y[rows], s[rows], ["a", "b", "c"], counts),
      "linear_probe": {"logreg": {"shared": {"100": cells.score(
          y[rows], s[rows] + 0.5 * y[rows], ["a", "b", "c"], counts)}}}}}}


def test_a_seed_group_is_the_mean_of_its_seeds_on_the_same_resamples():
  y, strong = _scored(200, signal=3.0)
  weak = strong + np.random.default_rng(7).normal(scale=3.0, size=strong.shape)
  a, b = _result("s0", y, strong), _result("s1", y, weak)
  g = seeds.group_result("recipe", [a, b])
  za, zb, zg = (r["tasks"]["t"]["zero_shot"] for r in (a, b, g))
  assert zg["seed_aucs"] == pytest.approx([za["auc"], zb["auc"]])
  assert zg["auc"] == pytest.approx((za["auc"] + zb["auc"]) / 2)
  lo, hi = zg["interval"]
  assert lo < zg["auc"] < hi and zg["seeds"] == 2
  # The probe cells are grouped too, in the members' layout.
  pg = g["tasks"]["t"]["linear_probe"]["logreg"]["shared"]["100"]
  assert pg["auc"] == pytest.approx(np.mean(pg["seed_aucs"]))
  # Paired against one of its seeds: half the seeds' difference, on the same draws.
  c = report.compare(g, b)
  d = c["tasks"]["t"]["zero-shot"]
  assert d["difference"] == pytest.approx((za["auc"] - zb["auc"]) / 2)
  assert 0 < d["interval"][0] <= d["difference"] <= d["interval"][1]
  # Two identical seeds: the group is that model, interval included.
  twin = seeds.group_result("twin", [a, _result("s0b", y, strong.copy())])
  assert twin["tasks"]["t"]["zero_shot"]["interval"] == pytest.approx(za["interval"])
  assert report.compare(twin, a)["tasks"]["t"]["zero-shot"]["interval"] == [0.0, 0.0]
  text = report.markdown([a, b, g])
  assert f"{{{100 * za['auc']:.1f}, {100 * zb['auc']:.1f}}}" in text
  assert "mean over its seeds" in text


def test_a_seed_group_scores_the_records_every_seed_has():
  y, s = _scored(120)
  g = seeds.group_result("g", [_result("s0", y, s), _result("s1", y, s, rows=np.arange(1, 120))])
  assert g["tasks"]["t"]["records"] == 119
  alone = cells.score(y[1:], s[1:], ["a", "b", "c"], bootstrap.resample_counts(119))
  assert g["tasks"]["t"]["zero_shot"]["auc"] == pytest.approx(alone["auc"])


@pytest.mark.parametrize("spec, match", [
    ("recipe", "NAME=MODEL"), ("recipe=s0", "two or more"), ("recipe=s0+s0", "two or more"),
    ("recipe=s0+s9", "not among"), ("s1=s0+s2", "already"), ("=s0+s1", "NAME=MODEL")])
def test_group_specs_are_checked(spec, match):
  with pytest.raises(ValueError, match=match):
    seeds.parse_groups([spec], ["s0", "s1", "s2"])
  assert seeds.parse_groups(["r=s0+s1+s2"], ["s0", "s1", "s2"]) == {"r": ["s0", "s1", "s2"]}


def test_a_seed_group_cell_without_a_number_names_why():
  y, s = _scored(120)
  a, b = _result("s0", y, s), _result("s1", y, s)
  del b["tasks"]["t"]["linear_probe"]["logreg"]["shared"]["100"]
  a["tasks"]["t"]["zero_shot"] = cells.no_cell("model has no report tower")
  g = seeds.group_result("g", [a, b])["tasks"]["t"]
  assert g["zero_shot"]["auc"] is None and "no report tower" in g["zero_shot"]["reason"]
  probe = g["linear_probe"]["logreg"]["shared"]["100"]
  assert probe["auc"] is None and "no cell" in probe["reason"]
