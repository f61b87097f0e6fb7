"""Bootstrap intervals of macro ROC-AUC: records resampled, the class set held fixed.

An interval is the 2.5-97.5 percentile range of the macro AUC over `num` resamples of the
evaluated records (drawn with replacement). Resamples depend only on the number of records
and the seed, so two models scored on the same records see the same resamples: the interval
of their difference (`paired_interval`) is paired, and a model against itself gives [0, 0].

The classes of the macro mean are those of the point estimate (never re-chosen per resample).
A resample that draws no positive (or no negative) of a rare class has no AUC for that class;
its macro mean is taken over the fixed classes it can score, and the number of such
(resample, class) draws is reported (`undefined_draws`), since dropping whole resamples would
leave none on tables with one-positive classes.

AUCs are computed from resample weights (how often each record was drawn) on scores sorted
once, with ties counted half, so 1000 resamples cost a few vectorised passes per class.
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


def per_class_auc(y_NxC: np.ndarray, s_NxC: np.ndarray, w_BxN: np.ndarray) -> np.ndarray:
  """[B, C] AUCs of every class column under every weight row (see `weighted_auc`)."""
  return np.stack([weighted_auc(y_NxC[:, j], s_NxC[:, j], w_BxN)
                   for j in range(y_NxC.shape[1])], axis=1)


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
                   level: float = LEVEL) -> dict:
  """Percentile interval of the macro AUC over the given (fixed) class columns.

  Args:
    y_NxC: labels of the classes in the macro mean (each with both labels in the full set).
    s_NxC: their scores.
    counts_BxN: resample counts (`resample_counts(N)`).
    level: coverage.

  Returns:
    {"interval": [lo, hi], "per_class_interval": [[lo, hi]] * C, "undefined_draws": int,
    "resamples": B}.
  """
  auc_BxC = per_class_auc(y_NxC, s_NxC, counts_BxN)
  return {"interval": _percentiles(_macro(auc_BxC), level),
          "per_class_interval": [_percentiles(auc_BxC[:, j], level)
                                 for j in range(auc_BxC.shape[1])],
          "undefined_draws": int(np.isnan(auc_BxC).sum()), "resamples": int(len(counts_BxN))}


def _mean_macro(y_NxC: np.ndarray, score_sets: Sequence[np.ndarray], w_BxN: np.ndarray
                ) -> np.ndarray:
  """[B] mean over the score sets (one per seed) of their macro AUCs under each weight row."""
  return np.mean([_macro(per_class_auc(y_NxC, s, w_BxN)) for s in score_sets], axis=0)


def _sets(scores) -> list[np.ndarray]:
  return list(scores) if isinstance(scores, (list, tuple)) else [scores]


def mean_macro_interval(y_NxC: np.ndarray, score_sets: Sequence[np.ndarray],
                        counts_BxN: np.ndarray, level: float = LEVEL) -> dict:
  """Interval of the mean macro AUC of several score sets (seeds) on the same resamples.

  Args:
    y_NxC: labels of the classes in the macro means.
    score_sets: [N, C] scores of each member, row for row the same records.
    counts_BxN: resample counts; every member is scored on the same draw.
    level: coverage.

  Returns:
    {"interval": [lo, hi], "member_aucs": each member's macro AUC, "resamples": B}.
  """
  ones = np.ones((1, len(y_NxC)))
  members = [float(_macro(per_class_auc(y_NxC, s, ones))[0]) for s in score_sets]
  return {"interval": _percentiles(_mean_macro(y_NxC, score_sets, counts_BxN), level),
          "member_aucs": members, "resamples": int(len(counts_BxN))}


def paired_interval(y_NxC: np.ndarray, s_a_NxC, s_b_NxC, counts_BxN: np.ndarray,
                    level: float = LEVEL) -> dict:
  """Macro AUC of A minus that of B on the same records and classes, with a paired interval.

  Args:
    y_NxC: labels of the classes both macro means use.
    s_a_NxC: model A's scores; s_b_NxC: model B's, row for row the same records. Either may
      be a list of such arrays (a seed group): its macro AUC is then the mean over the list.
    counts_BxN: resample counts; each resample scores both models on the same draw.
    level: coverage.

  Returns:
    {"difference": point A - B, "interval": [lo, hi], "resamples": B}.
  """
  a, b = _sets(s_a_NxC), _sets(s_b_NxC)
  ones = np.ones((1, len(y_NxC)))
  point = float(_mean_macro(y_NxC, a, ones)[0] - _mean_macro(y_NxC, b, ones)[0])
  diff = _mean_macro(y_NxC, a, counts_BxN) - _mean_macro(y_NxC, b, counts_BxN)
  return {"difference": point, "interval": _percentiles(diff, level),
          "resamples": int(len(counts_BxN))}
