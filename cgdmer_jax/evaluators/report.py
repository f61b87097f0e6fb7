"""The results tables: one row per model and metric, and paired differences between models.

A cell reads `72.3 (68.1–76.0)`: macro ROC-AUC x 100 on the evaluated split and its 95 %
bootstrap interval; MERL's probe adds `[74.0]`, its max over epochs (selected on the evaluated
split, as MERL reports it). A cell without a number reads "–", and its reason is listed under
the table. `compare` scores two models on the records both have, with the same resamples,
and gives the paired interval of the difference, cell against cell or (`NAME@PCT`) a probe
cell at one label fraction against another's at a different one.
"""

from __future__ import annotations

from typing import Iterator
from typing import Sequence

import numpy as np

from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import seeds
from cgdmer_jax.evaluators import stored


def _pct(v) -> str:
  return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def cells_of(entry: dict) -> Iterator[tuple[str, dict]]:
  """(metric label, cell) of one task entry, in table order."""
  if "zero_shot" in entry:
    yield "zero-shot", entry["zero_shot"]
  for probe, by_feature in entry.get("linear_probe", {}).items():
    for feat, by_fraction in by_feature.items():
      for frac, cell in by_fraction.items():
        yield f"linear probe {frac}% {probe} {feat}", cell


def _metric_order(all_results) -> list[str]:
  labels = []
  for r in all_results:
    for e in r["tasks"].values():
      labels += [label for label, _ in cells_of(e)]
  return list(dict.fromkeys(labels, None))


def cell_text(cell: dict | None) -> str:
  """One table cell: `AUC (low–high)` x 100, `–` without a number, `n/a` when absent."""
  if cell is None:
    return "n/a"
  if cell.get("auc") is None:
    return "–"
  iv = cell.get("interval")
  text = _pct(cell["auc"]) + (f" ({_pct(iv[0])}–{_pct(iv[1])})" if iv else "")
  if cell.get("auc_max_over_epochs") is not None:
    text += f" [{_pct(cell['auc_max_over_epochs'])}]"
  if cell.get("seed_aucs"):
    text += " {" + ", ".join(_pct(a) for a in cell["seed_aucs"]) + "}"
  return text


def markdown(all_results: Sequence[dict]) -> str:
  """Markdown table(s): rows model x metric, columns tasks, with the reasons of "–" cells."""
  task_names = list(dict.fromkeys(t for r in all_results for t in r["tasks"]))
  splits = sorted({r.get("split", "test") for r in all_results})
  lines = ["| model | metric | " + " | ".join(task_names) + " |",
           "|---|---|" + "---|" * len(task_names)]
  reasons: dict[str, list[str]] = {}
  for r in all_results:
    for metric in _metric_order([r]):
      row = []
      for t in task_names:
        e = r["tasks"].get(t, {})
        cell = dict(cells_of(e)).get(metric)
        if cell is None and e.get("reason"):
          cell = {"auc": None, "reason": e["reason"]}
        row.append(cell_text(cell))
        if cell is not None and cell.get("auc") is None:
          reasons.setdefault(cell.get("reason", "no number"), []).append(
              f"{r['model']} {t} {metric}")
      lines.append(f"| {r['model']} | {metric} | " + " | ".join(row) + " |")
  lines += ["", f"Macro ROC-AUC x 100 on the {'/'.join(splits)} split (95 % bootstrap interval "
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
  if any(t == "csn_exact" for t in task_names):
    lines.append("`csn`: MERL's label columns (substring-matched); `csn_exact`: a class is "
                 "positive when it is one of the record's diagnosis tokens.")
  if reasons:
    lines += ["", "Cells without a number (–):"]
    for reason, where in reasons.items():
      shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
      lines.append(f"- {reason}: {shown}")
  return "\n".join(lines) + "\n"


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


def _paired_cells(ea: dict, eb: dict, pct_a: str | None, pct_b: str | None
                  ) -> Iterator[tuple[str, dict, dict]]:
  """(label, cell of A, cell of B) to difference: the same metric, or with a percentage on
  either side the same probe and features at A's and B's percentages (the side without one
  takes the other's)."""
  if pct_a is None and pct_b is None:
    cells_b = dict(cells_of(eb))
    for label, ca in cells_of(ea):
      if label in cells_b:
        yield label, ca, cells_b[label]
    return
  pa, pb = pct_a or pct_b, pct_b or pct_a
  for probe, by_feature in ea.get("linear_probe", {}).items():
    for feat, by_fraction in by_feature.items():
      ca = by_fraction.get(pa)
      cb = eb.get("linear_probe", {}).get(probe, {}).get(feat, {}).get(pb)
      if ca is not None and cb is not None:
        label = f"linear probe {pa}%" + (f" vs {pb}%" if pb != pa else "")
        yield f"{label} {probe} {feat}", ca, cb


def compare(a: dict, b: dict, resamples: int = bootstrap.NUM_RESAMPLES, seed: int = 0,
            percentages: tuple[str | None, str | None] = (None, None)) -> dict:
  """Paired differences A - B of every cell both models have a number for.

  Args:
    a, b: results of `runner.evaluate_encoder` on the same tasks and split (with their
      private scores).
    resamples, seed: bootstrap settings.
    percentages: (A's, B's) label percentage (`split_operand`); None on both sides pairs each
      cell with the same cell of B, a percentage on either side pairs A's probe cells at its
      percentage with B's at its own (e.g. ('10', '100')).

  Returns:
    {"a", "b", "split", "tasks": {task: {metric: {difference, interval, records, classes}}}}.
  """
  pct_a, pct_b = percentages
  out = {"a": a["model"] + (f"@{pct_a}" if pct_a else ""),
         "b": b["model"] + (f"@{pct_b}" if pct_b else ""), "split": a.get("split"), "tasks": {}}
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
    for metric, ca, cb in _paired_cells(ea, eb, pct_a, pct_b):
      if ca.get("auc") is None or cb.get("auc") is None:
        continue
      cols = sorted(set(ca["_columns"]) & set(cb["_columns"]))
      cols = [j for j in cols if 0 < y[:, j].sum() < len(y)]
      if len(cols) < 2:
        continue
      d = bootstrap.paired_interval(
          y[:, cols], [s[ia][:, cols] for s in seeds.score_sets(ca)],
          [s[ib][:, cols] for s in seeds.score_sets(cb)], counts)
      rows[metric] = {**d, "records": int(len(common)), "classes": len(cols)}
    out["tasks"][task] = rows
  return out


def compare_markdown(comparison: dict) -> str:
  """Markdown table of one comparison: difference x 100 and its paired 95 % interval."""
  tasks = list(comparison["tasks"])
  metrics = list(dict.fromkeys(m for rows in comparison["tasks"].values() for m in rows))
  name = f"{comparison['a']} − {comparison['b']}"
  lines = [f"Paired difference {name} (macro AUC x 100 on {comparison['split']}, 95 % paired "
           "bootstrap interval; the same resampled records for both models):", "",
           "| difference | metric | " + " | ".join(tasks) + " |",
           "|---|---|" + "---|" * len(tasks)]
  for m in metrics:
    row = []
    for t in tasks:
      d = comparison["tasks"][t].get(m)
      if d is None or d["interval"] is None:
        row.append("–")
      else:
        lo, hi = d["interval"]
        row.append(f"{100 * d['difference']:+.1f} ({100 * lo:+.1f}–{100 * hi:+.1f})")
    lines.append(f"| {name} | {m} | " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"
