"""Paired permutation test of a macro AUC (and AUPRC) difference between two models.

Under the null hypothesis that the two models score the records alike, which model produced
a record's scores is arbitrary: each permutation swaps, record by record with probability
1/2, the two models' scores of that record (every class at once), and recomputes the macro
difference A - B. The two-sided p-value is

  p = (1 + #{permutations with |d_perm| >= |d_obs|}) / (1 + permutations),

so it is never 0, and a model against itself gives exactly 1 (every swap leaves the scores
as they were). Scores are turned into ranks per class first (average ranks for ties): ROC-AUC
and AUPRC depend only on the order of the scores, so each model's values are unchanged, while
two models on different scales (logits, cosines, probabilities) become exchangeable.

A seed group is a list of score sets (`seeds.score_sets`): member k of A is swapped with
member k of B with the same per-record coin flips (whole records change sides), and each
side's value is the mean over its members. Groups of different sizes have no such pairing
and get no p-value.

All permutations of one class are scored at once: the rank codes of a [P, N] array of swapped
scores are counted per row (a histogram, no sort), and AUC and AP read off cumulative counts,
a few vectorised passes.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

NUM_PERMUTATIONS = 1000
# Permuted statistics that equal the observed one in exact arithmetic may differ from it by
# rounding; they must count as "at least as extreme".
_TOLERANCE = 1e-12


def rank_codes(s_NxC: np.ndarray) -> np.ndarray:
  """Twice the average ranks (2..2N, ties share their mean rank) of every class column, as
  integers: the order of the scores, ties included, on one scale for every model."""
  ranks = stats.rankdata(np.asarray(s_NxC, np.float64), method="average", axis=0)
  return np.rint(2 * ranks).astype(np.int64)


def coded_metrics(codes_PxN: np.ndarray, y_N: np.ndarray, size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """ROC-AUC (ties half) and average precision of rows of integer-coded scores.

  A row's scores enter only through their order, so they are counted per code value (a
  histogram per row) instead of sorted: each positive adds the negatives below it and half of
  those tied with it (AUC), and the precision at its own score as threshold (AP: the records
  scored at least as high, ties included, as scikit-learn's distinct thresholds).

  Args:
    codes_PxN: P score rows of the same N records, integers in [0, size) (higher: more
      positive).
    y_N: 0/1 labels with at least one positive and one negative.
    size: number of possible codes.

  Returns:
    ([P] AUCs, [P] APs), equal to scikit-learn's `roc_auc_score` / `average_precision_score`
    of each row.
  """
  num_rows = len(codes_PxN)
  flat = np.asarray(codes_PxN, np.int64) + size * np.arange(num_rows)[:, None]
  pos = np.asarray(y_N).astype(bool)
  num_pos, num = int(pos.sum()), len(pos)
  at_pos = flat[:, pos].ravel()  # every positive's code, per row
  seen = np.bincount(flat.ravel(), minlength=num_rows * size)
  hit = np.bincount(at_pos, minlength=num_rows * size)
  seen_upto = np.cumsum(seen.reshape(num_rows, size), axis=1).ravel()  # codes <= c
  hit_upto = np.cumsum(hit.reshape(num_rows, size), axis=1).ravel()
  # Read at each positive's own code only ([P, positives], not [P, size]), in integers.
  s_up, h_up = seen_upto[at_pos], hit_upto[at_pos]
  s_at, h_at = seen[at_pos], hit[at_pos]
  # AUC: negatives below the positive plus half of those tied with it.
  twice = (2 * (s_up - h_up) - (s_at - h_at)).reshape(num_rows, num_pos).sum(1)
  auc = twice / (2.0 * num_pos * (num - num_pos))
  # AP: the precision at the positive's threshold (records scored >= its code, ties included).
  precision = (num_pos - h_up + h_at) / (num - s_up + s_at)
  ap = precision.reshape(num_rows, num_pos).sum(1) / num_pos
  return auc, ap


def row_metrics(v_PxN: np.ndarray, y_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`coded_metrics` of real-valued score rows (coded by their distinct values)."""
  values, codes = np.unique(np.asarray(v_PxN, np.float64), return_inverse=True)
  return coded_metrics(codes.reshape(np.shape(v_PxN)), y_N, len(values))


def _p_value(d_P1: np.ndarray) -> float:
  """Two-sided p of row 0 (observed) among rows 1.. (permutations)."""
  extreme = np.abs(d_P1[1:]) >= np.abs(d_P1[0]) - _TOLERANCE
  return float((1 + extreme.sum()) / (1 + len(d_P1) - 1))


def paired_test(y_NxC: np.ndarray, s_a, s_b, num: int = NUM_PERMUTATIONS, seed: int = 0
                ) -> dict:
  """Paired permutation test of macro AUC and macro AUPRC of A minus B.

  Args:
    y_NxC: labels of the classes both macro means use (each with a positive and a negative).
    s_a: model A's [N, C] scores, or a list of such arrays (a seed group: the mean over its
      members); s_b: model B's, row for row the same records.
    num: number of permutations.
    seed: the coin flips are a function of (N, num, seed) only.

  Returns:
    {"permutations": num, "auc": {"difference", "p_value"}, "auprc": {"difference",
    "p_value"}}; with seed groups of different sizes the p-values are None and "reason" says
    why.
  """
  a = list(s_a) if isinstance(s_a, (list, tuple)) else [s_a]
  b = list(s_b) if isinstance(s_b, (list, tuple)) else [s_b]
  y = np.asarray(y_NxC)
  if len(a) != len(b):
    reason = (f"no permutation test: {len(a)} against {len(b)} score sets (seed groups are "
              f"swapped member by member and need as many seeds on both sides)")
    return {"permutations": 0, "reason": reason, "auc": {"difference": None, "p_value": None},
            "auprc": {"difference": None, "p_value": None}}
  n, num_classes = y.shape
  flips = np.random.default_rng(seed).random((num, n)) < 0.5
  swap = np.concatenate([np.zeros((1, n), bool), flips], axis=0)  # row 0: as observed
  d_auc, d_ap = np.zeros(num + 1), np.zeros(num + 1)
  for sa, sb in zip(a, b):
    ra_CxN = np.ascontiguousarray(rank_codes(sa).T)
    rb_CxN = np.ascontiguousarray(rank_codes(sb).T)
    for j in range(num_classes):
      auc_a, ap_a = coded_metrics(np.where(swap, rb_CxN[j], ra_CxN[j]), y[:, j], 2 * n + 1)
      auc_b, ap_b = coded_metrics(np.where(swap, ra_CxN[j], rb_CxN[j]), y[:, j], 2 * n + 1)
      d_auc += auc_a - auc_b
      d_ap += ap_a - ap_b
  scale = 1.0 / (len(a) * num_classes)  # the mean over members of the macro means
  d_auc, d_ap = d_auc * scale, d_ap * scale
  return {"permutations": int(num),
          "auc": {"difference": float(d_auc[0]), "p_value": _p_value(d_auc)},
          "auprc": {"difference": float(d_ap[0]), "p_value": _p_value(d_ap)}}
