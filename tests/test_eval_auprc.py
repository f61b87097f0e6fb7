"""AUPRC beside AUROC, per-class tables, the paired permutation test and probe-kind operands."""

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.metrics import roc_auc_score

from cgdmer_jax.evaluators import auc
from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import cells
from cgdmer_jax.evaluators import permutation
from cgdmer_jax.evaluators import report
from cgdmer_jax.evaluators import seeds
from cgdmer_jax.evaluators import stored
from cgdmer_jax.evaluators import summary

CLASSES = ["a", "b", "c", "never"]


def _labels(n, seed=0):
  y = (np.random.default_rng(seed).random((n, 4)) < 0.3).astype(np.int8)
  y[0, :3], y[1, :3] = 1, 0
  y[:, 3] = 0  # no positive: skipped, but counted in `positives`
  return y


def _scores(y, seed, signal):
  return y * signal + np.random.default_rng(seed).normal(size=y.shape)


def _result(name, y, s_by_probe, counts=None):
  """A model's results: zero-shot from the first probe's scores, probe cells at 10 and 100 %."""
  counts = bootstrap.resample_counts(len(y)) if counts is None else counts
  first = next(iter(s_by_probe.values()))
  return {"model": name, "split": "val", "bootstrap": {"resamples": len(counts), "seed": 0},
          "tasks": {"t": {"_y": y, "_rows": np.arange(len(y)), "classes": CLASSES,
                          "zero_shot": cells.score(y, first, CLASSES, counts, split="val"),
                          "linear_probe": {probe: {"shared": {
                              pct: cells.score(y, s, CLASSES, counts, split="val")
                              for pct in ("10", "100")}} for probe, s in s_by_probe.items()}}}}


def test_average_precision_equals_sklearn_point_and_weighted_with_ties():
  rng = np.random.default_rng(4)
  y = rng.integers(0, 2, 250)
  s = np.round(rng.normal(size=250) + y, 1)  # many ties
  assert bootstrap.weighted_ap(y, s, np.ones((1, 250)))[0] == pytest.approx(
      average_precision_score(y, s), abs=1e-12)
  counts = bootstrap.resample_counts(250, 6, seed=2)
  got = bootstrap.weighted_ap(y, s, counts)
  for row, value in zip(counts, got):
    assert value == pytest.approx(average_precision_score(y, s, sample_weight=row), abs=1e-12)
  assert len(set(np.round(got, 9))) == 6  # the rows really differ
  # No positive: no AP; no negative: AP 1.
  assert np.isnan(bootstrap.weighted_ap(np.zeros(4), np.arange(4.0), np.ones((1, 4)))[0])
  assert bootstrap.weighted_ap(np.ones(4), np.arange(4.0), np.ones((1, 4)))[0] == 1.0
  # The point estimate of a cell and the permutation test's per-row metrics agree too.
  y2 = np.stack([y, 1 - y], 1)
  s2 = np.stack([s, np.round(rng.normal(size=250), 1)], 1)
  point = auc.macro_auprc(y2, s2, ["p", "q"])
  assert point.per_class["q"] == pytest.approx(average_precision_score(y2[:, 1], s2[:, 1]))
  rows = np.stack([s, -s, np.round(rng.normal(size=250), 1)])
  auc_rows, ap_rows = permutation.row_metrics(rows, y)
  np.testing.assert_allclose(ap_rows, [average_precision_score(y, r) for r in rows], atol=1e-12)
  np.testing.assert_allclose(auc_rows, [roc_auc_score(y, r) for r in rows], atol=1e-12)


def test_a_cell_carries_auprc_over_the_auc_classes_and_positives_of_every_class():
  y = _labels(150)
  s = _scores(y, 1, 1.5)
  cell = cells.score(y, s, CLASSES, bootstrap.resample_counts(150), split="val")
  want = {c: average_precision_score(y[:, j], s[:, j]) for j, c in enumerate(CLASSES[:3])}
  assert cell["per_class_auprc"] == pytest.approx(want)
  assert cell["auprc"] == pytest.approx(np.mean(list(want.values())))
  lo, hi = cell["auprc_interval"]
  assert lo < cell["auprc"] < hi
  for c, (clo, chi) in cell["per_class_auprc_interval"].items():
    assert clo <= cell["per_class_auprc"][c] <= chi
  assert cell["positives"] == {c: int(y[:, j].sum()) for j, c in enumerate(CLASSES)}
  assert cell["positives"]["never"] == 0 and "never" in cell["skipped"]
  assert cell["records"] == 150
  # A probe that trained two classes: AUPRC over those only.
  probe = cells.score(y, s, CLASSES, bootstrap.resample_counts(150), columns=[0, 2])
  assert list(probe["per_class_auprc"]) == ["a", "c"]
  assert probe["auprc"] == pytest.approx((want["a"] + want["c"]) / 2)
  # A cell without a number still counts the positives.
  none = cells.score(y, s, CLASSES, bootstrap.resample_counts(150), columns=[0])
  assert none["auc"] is None and none["positives"]["a"] == int(y[:, 0].sum())


def test_markdown_has_the_auprc_table_and_per_class_tables_on_request():
  y = _labels(120)
  r = _result("m", y, {"logreg": _scores(y, 1, 2.0)})
  zs = r["tasks"]["t"]["zero_shot"]
  md = report.markdown([r])
  auroc_at, auprc_at = md.index("| m | zero-shot | "), md.index("Macro AUPRC")
  assert auroc_at < auprc_at and "chance level" in md[auprc_at:auprc_at + 400].lower()
  lo, hi = zs["auprc_interval"]
  want = f"| m | zero-shot | {100 * zs['auprc']:.1f} ({100 * lo:.1f}–{100 * hi:.1f}) |"
  assert want in md[auprc_at:]
  assert "Per-class" not in md
  full = report.markdown([r], per_class=True)
  assert full.startswith(md) and "Per-class results" in full
  per_class = report.per_class_markdown(r)
  # zero-shot and the probe at its largest fraction (100 %), not at 10 %.
  assert "m t, zero-shot:" in per_class and "m t, linear probe 100% logreg shared:" in per_class
  assert "linear probe 10%" not in per_class
  n = int(y[:, 0].sum())
  a_lo, a_hi = zs["per_class_interval"]["a"]
  p_lo, p_hi = zs["per_class_auprc_interval"]["a"]
  row = (f"| a | {n} ({100 * n / 120:.1f}%) | {100 * zs['per_class']['a']:.1f} "
         f"({100 * a_lo:.1f}–{100 * a_hi:.1f}) | {100 * zs['per_class_auprc']['a']:.1f} "
         f"({100 * p_lo:.1f}–{100 * p_hi:.1f}) |")
  assert row in per_class
  assert "| never | 0 (0.0%) | – | – | no positive among 120 val records |" in per_class


def test_permutation_p_is_one_against_itself_and_small_for_a_clearly_better_model():
  y = _labels(200)[:, :3]
  strong = _scores(y, 1, 2.0)
  weak = strong + np.random.default_rng(9).normal(scale=3.0, size=strong.shape)
  same = permutation.paired_test(y, strong, strong.copy())
  assert same["auc"]["p_value"] == 1.0 and same["auprc"]["p_value"] == 1.0
  assert same["permutations"] == permutation.NUM_PERMUTATIONS
  better = permutation.paired_test(y, strong, weak)
  assert better["auc"]["p_value"] < 0.01 and better["auprc"]["p_value"] < 0.01
  assert better == permutation.paired_test(y, strong, weak)  # seeded
  ones = np.ones((1, 200))
  assert better["auc"]["difference"] == pytest.approx(
      bootstrap.paired_interval(y, strong, weak, ones)["difference"], abs=1e-12)
  assert better["auprc"]["difference"] == pytest.approx(
      bootstrap.paired_interval(y, strong, weak, ones, metric="auprc")["difference"], abs=1e-12)
  # Two models alike up to noise: p is not small. Scale does not matter (ranks are swapped).
  other = _scores(y, 2, 2.0)
  alike = permutation.paired_test(y, strong, 100 * other)
  assert alike["auc"]["p_value"] > 0.05
  assert alike["auc"]["p_value"] == permutation.paired_test(y, strong, other)["auc"]["p_value"]
  # Seed groups: member by member; groups of different sizes get no p-value.
  group = permutation.paired_test(y, [strong, other], [strong.copy(), other.copy()])
  assert group["auc"]["p_value"] == 1.0 and group["auprc"]["p_value"] == 1.0
  assert permutation.paired_test(y, [strong, other], [weak, weak])["auc"]["p_value"] < 0.01
  uneven = permutation.paired_test(y, [strong, other], weak)
  assert uneven["auc"]["p_value"] is None and "2 against 1" in uneven["reason"]


def test_compare_rows_carry_p_values_and_auprc_differences():
  y = _labels(150)
  strong, weak = _scores(y, 1, 2.0), _scores(y, 1, 0.5)
  a, b = _result("A", y, {"logreg": strong}), _result("B", y, {"logreg": weak})
  c = report.compare(a, b)
  row = c["tasks"]["t"]["zero-shot"]
  assert row["p_value"] < 0.01 and row["permutations"] == permutation.NUM_PERMUTATIONS
  assert row["auprc_p_value"] < 0.01 and row["auprc_interval"][0] > 0
  assert row["auprc_difference"] == pytest.approx(
      a["tasks"]["t"]["zero_shot"]["auprc"] - b["tasks"]["t"]["zero_shot"]["auprc"])
  self_row = report.compare(a, a)["tasks"]["t"]["zero-shot"]
  assert self_row["p_value"] == 1.0 and self_row["auprc_p_value"] == 1.0
  text = report.compare_markdown(c)
  assert "permutation test" in text and text.count("| difference | metric | t | p |") == 2
  d, (lo, hi) = row["difference"], row["interval"]
  assert f"| A − B | zero-shot | {100 * d:+.1f} ({100 * lo:+.1f}–{100 * hi:+.1f}) | <0.001 |" in (
      text)
  # A seed group against one model: interval, no p-value, the reason in the JSON and text.
  g = seeds.group_result("g", [a, _result("A2", y, {"logreg": _scores(y, 3, 2.0)})])
  gc = report.compare(g, b)["tasks"]["t"]["zero-shot"]
  assert gc["p_value"] is None and "seed groups" in gc["p_value_reason"]
  assert gc["interval"][0] > 0 and gc["auprc_interval"] is not None
  assert "2 against 1 score sets" in report.compare_markdown(report.compare(g, b))
  gg = report.compare(g, seeds.group_result("g2", [a, _result("A2", y, {
      "logreg": _scores(y, 3, 2.0)})]))["tasks"]["t"]["zero-shot"]
  assert gg["p_value"] == 1.0 and gg["difference"] == 0.0


def test_seed_group_cells_carry_auprc():
  y = _labels(150)
  a = _result("s0", y, {"logreg": _scores(y, 1, 2.0)})
  b = _result("s1", y, {"logreg": _scores(y, 2, 1.0)})
  za, zb = a["tasks"]["t"]["zero_shot"], b["tasks"]["t"]["zero_shot"]
  zg = seeds.group_result("g", [a, b])["tasks"]["t"]["zero_shot"]
  assert zg["seed_auprcs"] == pytest.approx([za["auprc"], zb["auprc"]])
  assert zg["auprc"] == pytest.approx((za["auprc"] + zb["auprc"]) / 2)
  assert zg["auprc_interval"][0] < zg["auprc"] < zg["auprc_interval"][1]
  assert zg["positives"] == za["positives"]


def test_finetune_cells_are_labelled_and_compared_across_probe_kinds():
  y = _labels(200)
  strong = _scores(y, 1, 2.5)
  weak = strong + np.random.default_rng(5).normal(scale=3.0, size=strong.shape)
  a = _result("A", y, {"logreg": weak, "finetune": strong})
  b = _result("B", y, {"logreg": strong})
  labels = [label for label, _ in report.cells_of(a["tasks"]["t"])]
  assert "fine-tune 100% shared" in labels and "linear probe 100% logreg shared" in labels
  assert not any("finetune" in label for label in labels)
  across = report.compare(a, b, percentages=("100", None), probes=("finetune", "logreg"))
  assert across["a"] == "A:finetune@100" and across["b"] == "B:logreg"
  rows = across["tasks"]["t"]
  assert list(rows) == ["fine-tune 100% shared vs linear probe 100% logreg shared"]
  row = next(iter(rows.values()))
  assert row["interval"] == [0.0, 0.0] and row["p_value"] == 1.0  # the same scores
  # A probe kind on one side only: B takes it too (B has no fine-tune cells: nothing paired).
  assert report.compare(a, b, probes=("finetune", None))["tasks"]["t"] == {}
  # A's logreg (weak) against B's logreg (strong) at every percentage.
  both = report.compare(a, b, probes=(None, "logreg"))["tasks"]["t"]
  assert list(both) == ["linear probe 10% logreg shared", "linear probe 100% logreg shared"]
  want = bootstrap.paired_interval(y[:, :3], weak[:, :3], strong[:, :3],
                                   bootstrap.resample_counts(200))
  assert both["linear probe 10% logreg shared"]["difference"] == pytest.approx(
      want["difference"])
  ft = report.compare(a, b, percentages=("10", "100"), probes=("finetune", "logreg"))
  assert list(ft["tasks"]["t"]) == ["fine-tune 10% shared vs linear probe 100% logreg shared"]


def test_operands_name_a_probe_kind_and_a_percentage():
  parse = report.parse_operand
  assert parse("A:finetune@10") == report.Operand("A", "10", "finetune")
  assert parse("A@10") == report.Operand("A", "10", None)
  assert parse("A:logreg") == report.Operand("A", None, "logreg")
  assert parse("A") == report.Operand("A")
  assert str(parse("A:finetune@1.0")) == "A:finetune@1"
  # Names holding the separators, when they are evaluated models.
  assert parse("run@2", names={"run@2"}) == report.Operand("run@2")
  assert parse("run@2:merl", names={"run@2"}) == report.Operand("run@2", None, "merl")
  assert parse("gs:x@10", names={"gs:x"}) == report.Operand("gs:x", "10", None)
  for bad in ("A:@10", ":finetune", "A:fine tune", "A:finetune@ten", "A:finetune@0"):
    with pytest.raises(ValueError, match="--compare operand"):
      parse(bad)
  assert report.split_operand("A@10") == ("A", "10")  # the old parser is unchanged


def test_stored_results_without_auprc_gain_it_on_loading(tmp_path):
  y = _labels(120)
  live = _result("old", y, {"logreg": _scores(y, 1, 2.0)})
  folder = tmp_path / "old"
  summary.write_results(folder, live)
  saved = json.loads((folder / stored.RESULTS_FILE).read_text())
  new_keys = ("auprc", "auprc_interval", "per_class_auprc", "per_class_auprc_interval",
              "auprc_undefined_draws", "positives", "records")
  cell_paths = [("zero_shot",), ("linear_probe", "logreg", "shared", "10"),
                ("linear_probe", "logreg", "shared", "100")]
  for path in cell_paths:
    cell = saved["tasks"]["t"]
    for k in path:
      cell = cell[k]
    for k in new_keys:
      del cell[k]
  (folder / stored.RESULTS_FILE).write_text(json.dumps(saved))
  back = stored.load(folder, split="val")
  for path in cell_paths:
    a, b = live["tasks"]["t"], back["tasks"]["t"]
    for k in path:
      a, b = a[k], b[k]
    assert b["auprc"] == pytest.approx(a["auprc"])
    assert b["auprc_interval"] == pytest.approx(a["auprc_interval"])
    assert b["per_class_auprc"] == pytest.approx(a["per_class_auprc"])
    assert b["positives"] == a["positives"] and b["records"] == 120
  assert "| old | zero-shot | n/a |" not in report.markdown([back])
