"""The results tables: one row per model and metric, and paired differences between models.

A cell reads `72.3 (68.1–76.0)`: macro ROC-AUC x 100 on the evaluated split and its 95 %
bootstrap interval; MERL's probe adds `[74.0]`, its max over epochs (selected on the evaluated
split, as MERL reports it). A cell without a number reads "–", and its reason is listed under
the table. The same table follows for macro AUPRC (average precision), whose chance level is
each class's prevalence rather than 50; `per_class_markdown` lists both per class. `compare`
gives paired intervals and permutation tests (`permutation.py`) of the AUROC and AUPRC
differences of two models on the records both have, cell against cell or (`NAME:PROBE@PCT`,
`parse_operand`) one probe kind or label fraction against another's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Collection
from typing import Iterator
from typing import Sequence

import numpy as np

from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import permutation
from cgdmer_jax.evaluators import seeds
from cgdmer_jax.evaluators import stored

# The probe kind of fine-tuned cells (`entry["linear_probe"]["finetune"][feature][pct]`).
FINETUNE = "finetune"
_PROBE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _pct(v) -> str:
  return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def cell_label(probe: str, feature: str, pct: str) -> str:
  """The metric label of a probe cell: `linear probe 10% logreg shared`, `fine-tune 10% shared`."""
  if probe == FINETUNE:
    return f"fine-tune {pct}% {feature}"
  return f"linear probe {pct}% {probe} {feature}"


def cells_of(entry: dict) -> Iterator[tuple[str, dict]]:
  """(metric label, cell) of one task entry, in table order."""
  if "zero_shot" in entry:
    yield "zero-shot", entry["zero_shot"]
  for probe, by_feature in entry.get("linear_probe", {}).items():
    for feat, by_fraction in by_feature.items():
      for frac, cell in by_fraction.items():
        yield cell_label(probe, feat, frac), cell


def _metric_order(all_results) -> list[str]:
  labels = []
  for r in all_results:
    for e in r["tasks"].values():
      labels += [label for label, _ in cells_of(e)]
  return list(dict.fromkeys(labels, None))


def _value_text(value, interval) -> str:
  text = _pct(value)
  return text + (f" ({_pct(interval[0])}–{_pct(interval[1])})" if interval and text != "–"
                 else "")


def cell_text(cell: dict | None, metric: str = "auc") -> str:
  """One table cell: `value (low–high)` x 100, `–` without a number, `n/a` when absent.

  Args:
    cell: a results cell (`cells.score`, a seed group's or a probe's).
    metric: 'auc' (with MERL's [max over epochs] and each seed's {AUC}) or 'auprc'.

  Returns:
    The text.
  """
  if cell is None:
    return "n/a"
  if cell.get("auc") is None:
    return "–"
  if metric == "auprc":
    if "auprc" not in cell:
      return "n/a"
    text = _value_text(cell["auprc"], cell.get("auprc_interval"))
    per_seed = cell.get("seed_auprcs")
  else:
    text = _value_text(cell["auc"], cell.get("interval"))
    if cell.get("auc_max_over_epochs") is not None:
      text += f" [{_pct(cell['auc_max_over_epochs'])}]"
    per_seed = cell.get("seed_aucs")
  if per_seed:
    text += " {" + ", ".join(_pct(a) for a in per_seed) + "}"
  return text


def _table(all_results: Sequence[dict], task_names: list[str], metric: str,
           reasons: dict[str, list[str]] | None) -> list[str]:
  """Rows model x metric label, columns tasks; collects the reasons of "–" cells."""
  lines = ["| model | metric | " + " | ".join(task_names) + " |",
           "|---|---|" + "---|" * len(task_names)]
  for r in all_results:
    for label in _metric_order([r]):
      row = []
      for t in task_names:
        e = r["tasks"].get(t, {})
        cell = dict(cells_of(e)).get(label)
        if cell is None and e.get("reason"):
          cell = {"auc": None, "reason": e["reason"]}
        row.append(cell_text(cell, metric))
        if reasons is not None and cell is not None and cell.get("auc") is None:
          reasons.setdefault(cell.get("reason", "no number"), []).append(
              f"{r['model']} {t} {label}")
      lines.append(f"| {r['model']} | {label} | " + " | ".join(row) + " |")
  return lines


def markdown(all_results: Sequence[dict], per_class: bool = False) -> str:
  """Markdown tables: macro AUROC, then macro AUPRC, rows model x metric, columns tasks, with
  the reasons of "–" cells.

  Args:
    all_results: results of models and groups (`runner.evaluate_encoder`, `seeds`).
    per_class: also the per-class tables of every result (`per_class_markdown`; for a
      model's own results.md).

  Returns:
    The markdown text.
  """
  task_names = list(dict.fromkeys(t for r in all_results for t in r["tasks"]))
  splits = "/".join(sorted({r.get("split", "test") for r in all_results}))
  reasons: dict[str, list[str]] = {}
  lines = _table(all_results, task_names, "auc", reasons)
  lines += ["", f"Macro ROC-AUC x 100 on the {splits} split (95 % bootstrap interval "
            "over records, classes fixed). merl probe: the epoch of the best val AUC (test "
            "reported) or the last epoch (val reported); [brackets]: MERL's max over epochs, "
            "selected on the reported split. logreg probe: C chosen on val (test reported) or "
            "by 3-fold cross-validation on the training subset (val reported). Classes without "
            "a positive and a negative among the training rows or the evaluated records are "
            "left out of the macro mean (listed in results.json)."]
  if any(r.get("group") for r in all_results):
    lines.append("A seed group's cell (`--group`) is the mean over its seeds on the records "
                 "and classes all of them scored, its interval that of the mean over the same "
                 "record resamples; {braces}: each seed's AUC.")
  if any(FINETUNE in r.get("probes", ()) for r in all_results):
    lines.append("fine-tune: all weights trained (`finetune`); the epoch of the best selection "
                 "AUC: val (test reported) or 10 % of the training subset held out (val).")
  if any(t == "csn_exact" for t in task_names):
    lines.append("`csn`: MERL's label columns (substring-matched); `csn_exact`: a class is "
                 "positive when it is one of the record's diagnosis tokens.")
  lines += ["", f"Macro AUPRC (average precision) x 100 on the {splits} split, over the "
            "classes of the AUROC above, with its 95 % bootstrap interval on the same "
            "resamples. Chance level of a class's AUPRC is its prevalence (positives / "
            "records), not 50, so AUPRC is low on rare classes even for good models; n/a: "
            "a cell stored without AUPRC.", ""]
  lines += _table(all_results, task_names, "auprc", None)
  if reasons:
    lines += ["", "Cells without a number (–):"]
    for reason, where in reasons.items():
      shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
      lines.append(f"- {reason}: {shown}")
  text = "\n".join(lines) + "\n"
  if per_class:
    text += "".join("\n" + t for t in map(per_class_markdown, all_results) if t)
  return text


def top_cells(entry: dict) -> Iterator[tuple[str, dict]]:
  """(label, cell) of zero-shot and every probe/feature at its largest label fraction."""
  if "zero_shot" in entry:
    yield "zero-shot", entry["zero_shot"]
  for probe, by_feature in entry.get("linear_probe", {}).items():
    for feat, by_fraction in by_feature.items():
      if by_fraction:
        top = max(by_fraction, key=float)
        yield cell_label(probe, feat, top), by_fraction[top]


def per_class_markdown(results: dict) -> str:
  """Per-class tables of one model: for every task, zero-shot and every probe/feature at its
  largest label fraction, each class's positives (and prevalence, the chance level of its
  AUPRC) among the evaluated records, AUROC and AUPRC x 100 with 95 % bootstrap intervals.

  Args:
    results: one model's (or group's) results.

  Returns:
    The markdown text ("" when no cell has per-class values).
  """
  lines = []
  for task, entry in results["tasks"].items():
    for label, cell in top_cells(entry):  # cells of seed groups have no per-class values
      if not cell or cell.get("auc") is None or "per_class" not in cell:
        continue
      positives = cell.get("positives") or {}
      records = cell.get("records")
      classes = entry.get("classes") or list(positives) or list(cell["per_class"])
      lines += ["", f"{results['model']} {task}, {label}:", "",
                "| class | positives | AUROC | AUPRC | note |", "|---|---|---|---|---|"]
      for c in classes:
        n = positives.get(c)
        count = "?" if n is None else (f"{n} ({100 * n / records:.1f}%)" if records else str(n))
        note = (cell.get("untrained") or {}).get(c) or (cell.get("skipped") or {}).get(c, "")
        auroc = _value_text(cell["per_class"].get(c),
                            (cell.get("per_class_interval") or {}).get(c))
        auprc = _value_text((cell.get("per_class_auprc") or {}).get(c),
                            (cell.get("per_class_auprc_interval") or {}).get(c))
        lines.append(f"| {c} | {count} | {auroc} | {auprc} | {note} |")
  head = (f"Per-class results on the {results.get('split', 'test')} split: AUROC and AUPRC "
          "x 100 (95 % bootstrap intervals); positives among the evaluated records, with the "
          "prevalence, which is the chance level of the class's AUPRC. \"–\": the class was "
          "not trained or has no positive and negative among the records (note).")
  return head + "\n" + "\n".join(lines) + "\n" if lines else ""


def split_operand(operand: str) -> tuple[str, str | None]:
  """`--compare` operand -> (model name, label percentage or None): 'amp@10' -> ('amp', '10').

  A suffix `@PCT` picks that side's linear-probe cells at PCT % of the labels, so cells of
  different fractions can be differenced (10 % of one model against 100 % of another). The
  percentage is written as the results key it names ('10', '100', '1', '0.5').
  """
  name, sep, pct = operand.rpartition("@")
  if not sep:
    return operand, None
  try:
    value = float(pct)
  except ValueError:
    raise ValueError(f"--compare operand {operand!r}: the part after '@' must be a label "
                     f"percentage such as 10 or 100") from None
  if not name or not 0 < value <= 100:
    raise ValueError(f"--compare operand {operand!r}: expected NAME@PCT with 0 < PCT <= 100")
  return name, f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Operand:
  """One side of `--compare`: a model or group, optionally one probe kind and label fraction."""
  name: str
  pct: str | None = None     # results key of a label percentage ('10', '100', '0.5')
  probe: str | None = None   # probe kind: 'merl', 'logreg', 'finetune'

  def __str__(self) -> str:
    return self.name + (f":{self.probe}" if self.probe else "") + (
        f"@{self.pct}" if self.pct else "")


def parse_operand(operand: str, names: Collection[str] = ()) -> Operand:
  """`--compare` operand `NAME[:PROBE][@PCT]` -> Operand: 'a:finetune@10' -> ('a', '10',
  'finetune').

  `:PROBE` picks that side's cells of one probe kind (`merl`, `logreg`, `finetune`), `@PCT`
  its cells at one label percentage (`split_operand`); the side without one takes the other
  side's (`A:finetune,B:logreg`: A's fine-tuned cells against B's logreg cells).

  Args:
    operand: the text.
    names: the evaluated models and groups; an operand that is one of them (a name holding
      '@' or ':') is that model, as is such a name followed by `:PROBE`.

  Raises:
    ValueError: a malformed percentage or probe kind.
  """
  if operand in names:
    return Operand(operand)
  head, sep, probe = operand.rpartition(":")
  if sep and head in names and _PROBE_NAME.fullmatch(probe):
    return Operand(head, None, probe)
  name_probe, pct = split_operand(operand)
  name, sep, probe = name_probe.rpartition(":")
  if not sep or name_probe in names:
    return Operand(name_probe, pct)
  if not name or not _PROBE_NAME.fullmatch(probe):
    raise ValueError(f"--compare operand {operand!r}: expected NAME[:PROBE][@PCT], e.g. "
                     f"run:finetune@10, with PROBE a probe kind such as logreg or finetune")
  return Operand(name, pct, probe)


def _pair_label(kind_a: str, kind_b: str, feat: str, pct_a: str, pct_b: str) -> str:
  if kind_a != kind_b:
    return f"{cell_label(kind_a, feat, pct_a)} vs {cell_label(kind_b, feat, pct_b)}"
  return cell_label(kind_a, feat, pct_a if pct_b == pct_a else f"{pct_a}% vs {pct_b}")


def _paired_cells(ea: dict, eb: dict, pcts: tuple[str | None, str | None],
                  probes: tuple[str | None, str | None]) -> Iterator[tuple[str, dict, dict]]:
  """(label, cell of A, cell of B) to difference: the same metric, or with a percentage or a
  probe kind on either side A's probe cells of that kind and percentage against B's of its own
  on the same feature (a side without one takes the other's; without a percentage on either
  side, the same percentage)."""
  if pcts == (None, None) and probes == (None, None):
    cells_b = dict(cells_of(eb))
    for label, ca in cells_of(ea):
      if label in cells_b:
        yield label, ca, cells_b[label]
    return
  pa, pb = pcts[0] or pcts[1], pcts[1] or pcts[0]
  ka, kb = probes[0] or probes[1], probes[1] or probes[0]
  for probe, by_feature in ea.get("linear_probe", {}).items():
    if ka is not None and probe != ka:
      continue
    other = kb or probe
    for feat, by_fraction in by_feature.items():
      for frac, ca in by_fraction.items():
        if pa is not None and frac != pa:
          continue
        cb = eb.get("linear_probe", {}).get(other, {}).get(feat, {}).get(pb or frac)
        if cb is not None:
          yield _pair_label(probe, other, feat, frac, pb or frac), ca, cb


def compare(a: dict, b: dict, resamples: int = bootstrap.NUM_RESAMPLES, seed: int = 0,
            percentages: tuple[str | None, str | None] = (None, None),
            probes: tuple[str | None, str | None] = (None, None),
            permutations: int = permutation.NUM_PERMUTATIONS) -> dict:
  """Paired differences A - B of every cell both models have a number for.

  Args:
    a, b: results of `runner.evaluate_encoder` on the same tasks and split (with their
      private scores).
    resamples, seed: bootstrap settings; `seed` also seeds the permutation test.
    percentages: (A's, B's) label percentage (`parse_operand`); None on both sides pairs each
      cell with the same cell of B, a percentage on either side pairs A's probe cells at its
      percentage with B's at its own (e.g. ('10', '100')).
    probes: (A's, B's) probe kind: set on either side, A's cells of its kind are paired with
      B's of its own (e.g. ('finetune', 'logreg')), same feature and percentage rules.
    permutations: number of permutations of the paired permutation test.

  Returns:
    {"a", "b", "split", "tasks": {task: {metric: {difference, interval, p_value,
    permutations, auprc_difference, auprc_interval, auprc_p_value, records, classes}}}};
    p-values are None, with `p_value_reason`, where the two sides cannot be permuted.
  """
  pct_a, pct_b = percentages
  out = {"a": str(Operand(a["model"], pct_a, probes[0])),
         "b": str(Operand(b["model"], pct_b, probes[1])), "split": a.get("split"), "tasks": {}}
  for task, ea in a["tasks"].items():
    eb = b["tasks"].get(task)
    if eb is None or "_rows" not in ea or "_rows" not in eb:
      continue
    common, ia, ib = np.intersect1d(ea["_rows"], eb["_rows"], return_indices=True)
    if not len(common):
      continue
    y = ea["_y"][ia]
    stored.check_same_labels(a["model"], y, b["model"], eb["_y"][ib], task)
    counts = bootstrap.resample_counts(len(common), resamples, seed)
    rows = {}
    for metric, ca, cb in _paired_cells(ea, eb, percentages, probes):
      if ca.get("auc") is None or cb.get("auc") is None:
        continue
      cols = sorted(set(ca["_columns"]) & set(cb["_columns"]))
      cols = [j for j in cols if 0 < y[:, j].sum() < len(y)]
      if len(cols) < 2:
        continue
      s_a = [s[ia][:, cols] for s in seeds.score_sets(ca)]
      s_b = [s[ib][:, cols] for s in seeds.score_sets(cb)]
      d = bootstrap.paired_interval(y[:, cols], s_a, s_b, counts)
      pr = bootstrap.paired_interval(y[:, cols], s_a, s_b, counts, metric="auprc")
      test = permutation.paired_test(y[:, cols], s_a, s_b, permutations, seed)
      rows[metric] = {**d, "p_value": test["auc"]["p_value"], "permutations": test["permutations"],
                      "auprc_difference": pr["difference"], "auprc_interval": pr["interval"],
                      "auprc_p_value": test["auprc"]["p_value"], "records": int(len(common)),
                      "classes": len(cols),
                      **({"p_value_reason": test["reason"]} if "reason" in test else {})}
    out["tasks"][task] = rows
  return out


def compare_markdown(comparison: dict) -> str:
  """Markdown tables of one comparison: AUROC and AUPRC differences x 100, each with its paired
  95 % bootstrap interval and its paired permutation p-value (column p after each task)."""
  tasks = list(comparison["tasks"])
  metrics = list(dict.fromkeys(m for rows in comparison["tasks"].values() for m in rows))
  name = f"{comparison['a']} − {comparison['b']}"
  rows = [d for by_metric in comparison["tasks"].values() for d in by_metric.values()]
  perms = "/".join(sorted({str(d["permutations"]) for d in rows if d.get("permutations")}))
  p_note = (f"p: two-sided paired permutation test, {perms} permutations swapping each "
            "record's scores (as ranks per class) between the two models with probability "
            "1/2, p = (1 + #{|permuted difference| >= |observed|}) / (1 + permutations)"
            if perms else "p: none (no permutation test, reasons below)")
  reasons = sorted({d["p_value_reason"] for d in rows if d.get("p_value_reason")})
  lines = []
  for key, what in (("", "macro AUC x 100"),
                    ("auprc_", "macro AUPRC x 100, whose chance level is the prevalence")):
    lines += [f"Paired difference {name} ({what}, on {comparison['split']}; 95 % paired "
              f"bootstrap interval, the same resampled records for both models; {p_note}):", "",
              "| difference | metric | " + " | ".join(f"{t} | p" for t in tasks) + " |",
              "|---|---|" + "---|---|" * len(tasks)]
    for m in metrics:
      row = []
      for t in tasks:
        d = comparison["tasks"][t].get(m) or {}
        iv, p = d.get(f"{key}interval"), d.get(f"{key}p_value")
        row += ["–", "–"] if iv is None else [
            f"{100 * d[f'{key}difference']:+.1f} ({100 * iv[0]:+.1f}–{100 * iv[1]:+.1f})",
            "–" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"]
      lines.append(f"| {name} | {m} | " + " | ".join(row) + " |")
    lines += [f"- {r}" for r in reasons] + [""]
  return "\n".join(lines[:-1]) + "\n"
