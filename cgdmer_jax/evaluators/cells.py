"""One cell of the results table: a macro AUC with its interval, or "–" with the reason.

Every number of the table (zero-shot, each probe, feature and label fraction) is built here
from the scores of the evaluated records, so all cells follow one rule: the macro mean is over
the classes that were trained (probes) and have a positive and a negative among the evaluated
records; with fewer than `auc.MIN_CLASSES` such classes the cell has no number, only a reason.
Beside the ROC-AUC a cell carries the AUPRC (average precision) over the same classes, with
its interval on the same resamples; its chance level is the class prevalence, so each cell
also counts the positives of every class among its evaluated records.
The scores and columns are kept (under keys starting with "_", not written to JSON) for the
paired comparisons of `report.py`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cgdmer_jax.evaluators import auc as auc_lib
from cgdmer_jax.evaluators import bootstrap


def trainable(y_train: np.ndarray, classes: Sequence[str]) -> tuple[list[int], dict[str, str]]:
  """Classes a probe can learn from its training rows (a positive and a negative each)."""
  return auc_lib.two_label_classes(y_train, classes, what="training rows")


def no_cell(reason: str, **extra) -> dict:
  """A cell without a number."""
  return {"auc": None, "reason": reason, **extra}


def start_probe(y_train, y_rep, classes: Sequence[str], counts_BxN, split: str, probe: str
                ) -> tuple[list[int], dict[str, str], dict, dict | None]:
  """What every probe does before fitting: its trainable classes and the cells it cannot fit.

  Args:
    y_train: [N, C] labels of the training subset.
    y_rep: labels of the evaluated split.
    classes: C names.
    counts_BxN: bootstrap resample counts of the evaluated records.
    split: name of the evaluated split.
    probe: the probe's name (stored in the cell).

  Returns:
    (columns, untrained, meta, cell): `cell` is the finished cell when there is nothing to fit
    (no training rows, or fewer than two trainable classes), else None.
  """
  n = len(y_train)
  if n == 0:
    return [], {}, {}, no_cell("no training rows", train_rows=0)
  columns, untrained = trainable(np.asarray(y_train), classes)
  meta = {"train_rows": int(n), "probe": probe}
  if len(columns) < auc_lib.MIN_CLASSES:
    return columns, untrained, meta, {
        **score(y_rep, np.zeros(np.shape(y_rep)), classes, counts_BxN, columns=columns,
                untrained=untrained, split=split), **meta}
  return columns, untrained, meta, None


def positives(y_NxC: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
  """{class: number of positives} among the given records, for every class."""
  return dict(zip(classes, (int(v) for v in np.asarray(y_NxC).sum(0))))


def auprc_keys(y_NxC: np.ndarray, s_NxC: np.ndarray, classes: Sequence[str],
               columns: Sequence[int], counts_BxN: np.ndarray) -> dict:
  """The AUPRC part of a cell: macro AUPRC over `columns`, its interval and per-class values.

  Args:
    y_NxC: labels of the evaluated records; s_NxC: their scores (all C columns).
    classes: C class names.
    columns: the classes of the cell's macro AUC (each with a positive and a negative).
    counts_BxN: the bootstrap resample counts of the cell's AUC interval.

  Returns:
    {auprc, auprc_interval, per_class_auprc, per_class_auprc_interval,
    auprc_undefined_draws}; chance level of each class is its prevalence.
  """
  use = list(columns)
  y, s = np.asarray(y_NxC)[:, use], np.asarray(s_NxC, np.float64)[:, use]
  point = auc_lib.macro_auprc(y, s, [classes[j] for j in use])
  iv = bootstrap.macro_interval(y, s, counts_BxN, metric="auprc")
  return {"auprc": point.macro, "auprc_interval": iv["interval"],
          "per_class_auprc": point.per_class,
          "per_class_auprc_interval": dict(zip(point.per_class, iv["per_class_interval"])),
          "auprc_undefined_draws": iv["undefined_draws"]}


def score(y_NxC: np.ndarray, s_NxC: np.ndarray, classes: Sequence[str],
          counts_BxN: np.ndarray, *, columns: Sequence[int] | None = None,
          untrained: dict[str, str] | None = None, split: str = "test") -> dict:
  """Macro AUC and AUPRC, 95 % bootstrap intervals and per-class values of one cell.

  Args:
    y_NxC: labels of the evaluated records; s_NxC: their scores.
    classes: C class names.
    counts_BxN: bootstrap resample counts of these records (`bootstrap.resample_counts`).
    columns: the classes that may enter the macro mean (the trained ones; None: all).
    untrained: {class: reason} of the classes a probe could not train (listed).
    split: the evaluated split's name, for the reasons.

  Returns:
    JSON-ready dict: auc (None with `reason` when there is no number), interval,
    per_class, per_class_interval, the same for AUPRC (`auprc_keys`), skipped (no AUC on this
    split), untrained, records, positives (per class, every class), and the private
    `_scores`/`_columns`.
  """
  allowed = set(range(len(classes)) if columns is None else columns)
  keep, skipped = auc_lib.two_label_classes(y_NxC, classes, what=f"{split} records")
  use = [j for j in keep if j in allowed]
  out = {"skipped": skipped, "untrained": dict(untrained or {}), "classes_scored": len(use),
         "records": int(len(y_NxC)), "positives": positives(y_NxC, classes)}
  if len(allowed) < auc_lib.MIN_CLASSES:
    return no_cell(f"{len(allowed)} class(es) can be trained (a positive and a negative "
                   f"among the training rows are needed for each)", **out)
  if len(use) < auc_lib.MIN_CLASSES:
    kind = "class(es)" if columns is None else "trained class(es)"
    return no_cell(f"{len(use)} {kind} with a positive and a negative among the "
                   f"{len(y_NxC)} {split} records", **out)
  y, s = np.asarray(y_NxC)[:, use], np.asarray(s_NxC, np.float64)[:, use]
  point = auc_lib.macro_auc(y, s, [classes[j] for j in use])
  iv = bootstrap.macro_interval(y, s, counts_BxN)
  out.update(auc=point.macro, interval=iv["interval"], per_class=point.per_class,
             per_class_interval=dict(zip(point.per_class, iv["per_class_interval"])),
             undefined_draws=iv["undefined_draws"], resamples=iv["resamples"],
             **auprc_keys(y_NxC, s_NxC, classes, use, counts_BxN),
             _scores=np.asarray(s_NxC, np.float64), _columns=list(use))
  return out
