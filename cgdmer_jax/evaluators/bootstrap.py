"""Bootstrap intervals of macro ROC-AUC and AUPRC: records resampled, the class set held fixed.

An interval is the 2.5-97.5 percentile range of the macro metric over `num` resamples of the
evaluated records (drawn with replacement). Resamples depend only on the number of records
and the seed, so two models scored on the same records see the same resamples: the interval
of their difference (`paired_interval`) is paired, and a model against itself gives [0, 0].

The classes of the macro mean are those of the point estimate (never re-chosen per resample).
A resample that draws no positive (or no negative) of a rare class has no AUC for that class;
its macro mean is taken over the fixed classes it can score, and the number of such
(resample, class) draws is reported (`undefined_draws`), since dropping whole resamples would
leave none on tables with one-positive classes.

AUCs are computed from resample weights (how often each record was drawn) on scores sorted
once, with ties counted half, so 1000 resamples cost a few vectorised passes per class. AUPRC
(average precision, scikit-learn's `average_precision_score`) is computed the same way: a step
sum over the distinct score thresholds, which is what scikit-learn does with tied scores. Its
chance level is the prevalence of the class, not 0.5.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NUM_RESAMPLES = 1000
LEVEL = 0.95


def resample_counts(n: int, num: int = NUM_RESAMPLES, seed: int = 0) -> np.ndarray:
  """How often each of `n` records is drawn in each of `num` resamples.

  Args:
    n: number of records.
    num: number of resamples.
    seed: the resamples are a function of (n, num, seed) only.

  Returns:
    [num, n] int32 counts; every row sums to n.
  """
  if n <= 0:
    raise ValueError("cannot resample an empty set of records")
  idx = np.random.default_rng(seed).integers(0, n, size=(num, n))
  flat = (idx + n * np.arange(num)[:, None]).ravel()
  return np.bincount(flat, minlength=num * n).reshape(num, n).astype(np.int32)


def weighted_auc(y_N: np.ndarray, s_N: np.ndarray, w_BxN: np.ndarray) -> np.ndarray:
  """ROC-AUC of one class under each row of record weights (Mann-Whitney, ties half).

  Args:
    y_N: 0/1 labels.
    s_N: scores.
    w_BxN: non-negative record weights (resample counts; ones give the plain AUC).

  Returns:
    [B] AUCs; NaN where a weight row has no positive or no negative.
  """
  order = np.argsort(s_N, kind="stable")
  s_sorted = np.asarray(s_N, np.float64)[order]
  pos = np.asarray(y_N)[order].astype(bool)
  w = np.asarray(w_BxN, np.float64)[:, order]
  wp, wn = w * pos, w * ~pos
  _, start, group = np.unique(s_sorted, return_index=True, return_inverse=True)
  end = np.append(start[1:], len(s_sorted))
  cum_neg = np.concatenate([np.zeros((len(w), 1)), np.cumsum(wn, axis=1)], axis=1)
  below = cum_neg[:, start[group]]          # negatives scored strictly lower
  tied = cum_neg[:, end[group]] - below      # negatives with the same score
  num = np.sum(wp * (below + 0.5 * tied), axis=1)
  den = wp.sum(1) * wn.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_ap(y_N: np.ndarray, s_N: np.ndarray, w_BxN: np.ndarray) -> np.ndarray:
  """Average precision of one class under each row of record weights.

  scikit-learn's definition, AP = sum_t (R_t - R_t-1) P_t over the distinct score thresholds t
  taken from the highest down: records with the same score enter together, and each positive
  contributes the precision at the threshold of its own score. A weight is a record's
  multiplicity, so a row of resample counts gives `average_precision_score(y, s,
  sample_weight=row)`.

  Args:
    y_N: 0/1 labels.
    s_N: scores.
    w_BxN: non-negative record weights (resample counts; ones give the plain AP).

  Returns:
    [B] APs; NaN where a weight row has no positive (a row without negatives gives 1).
  """
  order = np.argsort(-np.asarray(s_N, np.float64), kind="stable")  # highest score first
  s_sorted = np.asarray(s_N, np.float64)[order]
  pos = np.asarray(y_N)[order].astype(bool)
  w = np.asarray(w_BxN, np.float64)[:, order]
  wp = w * pos
  tp, seen = np.cumsum(wp, axis=1), np.cumsum(w, axis=1)
  # Last position of each run of equal scores: the threshold every record of the run enters at.
  last = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s_sorted) - 1)
  end = last[np.searchsorted(last, np.arange(len(s_sorted)))]
  tp_end, seen_end = tp[:, end], seen[:, end]
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = np.where(seen_end > 0, tp_end / np.where(seen_end > 0, seen_end, 1.0), 0.0)
    total = wp.sum(1)
    return np.where(total > 0, np.sum(wp * precision, axis=1) / np.where(total > 0, total, 1.0),
                    np.nan)


METRICS = {"auc": weighted_auc, "auprc": weighted_ap}


def per_class_auc(y_NxC: np.ndarray, s_NxC: np.ndarray, w_BxN: np.ndarray,
                  metric: str = "auc") -> np.ndarray:
  """[B, C] values of `metric` ('auc' or 'auprc', `METRICS`) of every class column under every
  weight row (see `weighted_auc`, `weighted_ap`)."""
  fn = METRICS[metric]
  return np.stack([fn(y_NxC[:, j], s_NxC[:, j], w_BxN) for j in range(y_NxC.shape[1])], axis=1)


def _macro(auc_BxC: np.ndarray) -> np.ndarray:
  ok = ~np.isnan(auc_BxC)
  with np.errstate(invalid="ignore"):
    return np.where(ok.any(1), np.nansum(auc_BxC, 1) / np.maximum(ok.sum(1), 1), np.nan)


def _percentiles(v: np.ndarray, level: float) -> list[float] | None:
  v = v[~np.isnan(v)]
  if not len(v):
    return None
  a = (1 - level) / 2
  return [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))]


def macro_interval(y_NxC: np.ndarray, s_NxC: np.ndarray, counts_BxN: np.ndarray,
                   level: float = LEVEL, metric: str = "auc") -> dict:
  """Percentile interval of the macro AUC (or AUPRC) over the given (fixed) class columns.

  Args:
    y_NxC: labels of the classes in the macro mean (each with both labels in the full set).
    s_NxC: their scores.
    counts_BxN: resample counts (`resample_counts(N)`).
    level: coverage.
    metric: 'auc' or 'auprc'.

  Returns:
    {"interval": [lo, hi], "per_class_interval": [[lo, hi]] * C, "undefined_draws": int,
    "resamples": B}.
  """
  auc_BxC = per_class_auc(y_NxC, s_NxC, counts_BxN, metric)
  return {"interval": _percentiles(_macro(auc_BxC), level),
          "per_class_interval": [_percentiles(auc_BxC[:, j], level)
                                 for j in range(auc_BxC.shape[1])],
          "undefined_draws": int(np.isnan(auc_BxC).sum()), "resamples": int(len(counts_BxN))}


def _mean_macro(y_NxC: np.ndarray, score_sets: Sequence[np.ndarray], w_BxN: np.ndarray,
                metric: str = "auc") -> np.ndarray:
  """[B] mean over the score sets (one per seed) of their macro metric under each weight row."""
  return np.mean([_macro(per_class_auc(y_NxC, s, w_BxN, metric)) for s in score_sets], axis=0)


def _sets(scores) -> list[np.ndarray]:
  return list(scores) if isinstance(scores, (list, tuple)) else [scores]


def mean_macro_interval(y_NxC: np.ndarray, score_sets: Sequence[np.ndarray],
                        counts_BxN: np.ndarray, level: float = LEVEL, metric: str = "auc"
                        ) -> dict:
  """Interval of the mean macro AUC (or AUPRC) of several score sets (seeds) on the same
  resamples.

  Args:
    y_NxC: labels of the classes in the macro means.
    score_sets: [N, C] scores of each member, row for row the same records.
    counts_BxN: resample counts; every member is scored on the same draw.
    level: coverage.
    metric: 'auc' or 'auprc'.

  Returns:
    {"interval": [lo, hi], "member_aucs": each member's macro value (of `metric`),
    "resamples": B}.
  """
  ones = np.ones((1, len(y_NxC)))
  members = [float(_macro(per_class_auc(y_NxC, s, ones, metric))[0]) for s in score_sets]
  return {"interval": _percentiles(_mean_macro(y_NxC, score_sets, counts_BxN, metric), level),
          "member_aucs": members, "resamples": int(len(counts_BxN))}


def paired_interval(y_NxC: np.ndarray, s_a_NxC, s_b_NxC, counts_BxN: np.ndarray,
                    level: float = LEVEL, metric: str = "auc") -> dict:
  """Macro AUC (or AUPRC) of A minus that of B on the same records and classes, with a paired
  interval.

  Args:
    y_NxC: labels of the classes both macro means use.
    s_a_NxC: model A's scores; s_b_NxC: model B's, row for row the same records. Either may
      be a list of such arrays (a seed group): its macro AUC is then the mean over the list.
    counts_BxN: resample counts; each resample scores both models on the same draw.
    level: coverage.
    metric: 'auc' or 'auprc'.

  Returns:
    {"difference": point A - B, "interval": [lo, hi], "resamples": B}.
  """
  a, b = _sets(s_a_NxC), _sets(s_b_NxC)
  ones = np.ones((1, len(y_NxC)))
  point = float(_mean_macro(y_NxC, a, ones, metric)[0] - _mean_macro(y_NxC, b, ones, metric)[0])
  diff = (_mean_macro(y_NxC, a, counts_BxN, metric)
          - _mean_macro(y_NxC, b, counts_BxN, metric))
  return {"difference": point, "interval": _percentiles(diff, level),
          "resamples": int(len(counts_BxN))}
