"""Per-class ROC-AUC and AUPRC and their macro means, with single-class columns skipped.

A class with no positive (or no negative) example in the evaluated set has no ROC curve.
Such classes are left out of the macro mean and listed with the reason, never averaged in as
0.5 (which would silently pull every score towards chance on small test sets). AUPRC (average
precision, scikit-learn's `average_precision_score`) is macro-averaged over the same classes;
its chance level is each class's prevalence, so unlike AUC it is not comparable across classes
or tasks with different prevalences.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.metrics import roc_auc_score

# A macro mean over fewer classes is not shown as a number: one class is not a macro mean,
# and none is not a measurement ("–" with the reason instead of 50.0).
MIN_CLASSES = 2


@dataclasses.dataclass
class AUCResult:
  per_class: dict[str, float]   # classes that have both positives and negatives
  skipped: dict[str, str]       # class -> why it was left out
  macro: float                  # mean of per_class; nan when every class was skipped

  def to_json(self) -> dict:
    return {"macro_auc": None if np.isnan(self.macro) else self.macro,
            "per_class": self.per_class, "skipped": self.skipped}


def macro_auc(y_true: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> AUCResult:
  """ROC-AUC per class column and their macro mean.

  Args:
    y_true: [N, C] 0/1 labels.
    scores: [N, C] real-valued scores (any monotone scale: logits, cosines, probabilities).
    classes: C class names.

  Returns:
    An `AUCResult`.
  """
  return _per_class(roc_auc_score, y_true, scores, classes)


def macro_auprc(y_true: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> AUCResult:
  """AUPRC (average precision) per class column and their macro mean, over the classes that
  have a positive and a negative (those of `macro_auc`). A class's chance level is its
  prevalence.

  Args:
    y_true: [N, C] 0/1 labels.
    scores: [N, C] real-valued scores.
    classes: C class names.

  Returns:
    An `AUCResult` whose values are average precisions.
  """
  return _per_class(average_precision_score, y_true, scores, classes)


def _per_class(fn, y_true, scores, classes: Sequence[str]) -> AUCResult:
  """`fn(y, s)` of every class column with both labels, and their mean."""
  y_true = np.asarray(y_true)
  scores = np.asarray(scores, dtype=np.float64)
  if y_true.shape != scores.shape or y_true.ndim != 2 or y_true.shape[1] != len(classes):
    raise ValueError(f"labels {y_true.shape}, scores {scores.shape} and {len(classes)} classes "
                     "do not match")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or Inf")
  keep, skipped = two_label_classes(y_true, classes)
  per_class = {classes[j]: float(fn(y_true[:, j], scores[:, j])) for j in keep}
  macro = float(np.mean(list(per_class.values()))) if per_class else float("nan")
  return AUCResult(per_class, skipped, macro)


def two_label_classes(y: np.ndarray, classes: Sequence[str], what: str = "examples"
                      ) -> tuple[list[int], dict[str, str]]:
  """Columns with both a positive and a negative, and why the others have no AUC.

  Args:
    y: [N, C] 0/1 labels.
    classes: C class names.
    what: how the rows are called in the reasons (e.g. "training rows").

  Returns:
    (indices of the usable columns, {class: reason} for the others).
  """
  y = np.asarray(y)
  keep, skipped = [], {}
  for j, name in enumerate(classes):
    pos = int(y[:, j].sum()) if len(y) else 0
    if pos == 0:
      skipped[name] = f"no positive among {len(y)} {what}"
    elif pos == len(y):
      skipped[name] = f"no negative among {len(y)} {what}"
    else:
      keep.append(j)
  return keep, skipped
