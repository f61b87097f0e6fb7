"""The results tables: one row per model and metric, and paired differences between models.

A cell reads `72.3 (68.1–76.0)`: macro ROC-AUC x 100 on the evaluated split and its 95 %
bootstrap interval; MERL's probe adds `[74.0]`, its max over epochs (selected on the evaluated
split, as MERL reports it). A cell without a number reads "–", and its reason is listed under
the table. `compare` scores two models on the records both have, with the same resamples,
and gives the paired interval of the difference.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import seeds


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


def compare(a: dict, b: dict, resamples: int = bootstrap.NUM_RESAMPLES, seed: int = 0) -> dict:
  """Paired differences A - B of every cell both models have a number for.

  Args:
    a, b: results of `runner.evaluate_encoder` on the same tasks and split (with their
      private scores).
    resamples, seed: bootstrap settings.

  Returns:
    {"a", "b", "split", "tasks": {task: {metric: {difference, interval, records, classes}}}}.
  """
  out = {"a": a["model"], "b": b["model"], "split": a.get("split"), "tasks": {}}
  for task, ea in a["tasks"].items():
    eb = b["tasks"].get(task)
    if eb is None or "_rows" not in ea or "_rows" not in eb:
      continue
    common, ia, ib = np.intersect1d(ea["_rows"], eb["_rows"], return_indices=True)
    if not len(common):
      continue
    y = ea["_y"][ia]
    counts = bootstrap.resample_counts(len(common), resamples, seed)
    cells_b = dict(cells_of(eb))
    rows = {}
    for metric, ca in cells_of(ea):
      cb = cells_b.get(metric)
      if ca.get("auc") is None or cb is None or cb.get("auc") is None:
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
