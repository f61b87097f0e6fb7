"""A clean linear probe: standardised features, one scikit-learn logistic regression per class.

The features are standardised with the training subset's statistics (`StandardScaler`), and
one `LogisticRegression` (L2, lbfgs) is fitted per class on the training subset only. Its
inverse regularisation C is taken from a small grid by the macro AUC on the selection split
(val when the evaluated split is test). When the evaluated split is val itself there is no
other held-out split, so C is chosen by 3-fold cross-validation on the training subset
(`selection = 'cv'`); with too few training rows for that, C = 1 (`selection = 'default'`).
Classes without a positive or a negative among the training rows are skipped and listed.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cgdmer_jax.evaluators import auc as auc_lib
from cgdmer_jax.evaluators import cells


@dataclasses.dataclass(frozen=True)
class LogRegConfig:
  c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
  max_iter: int = 1000
  cv_folds: int = 3
  seed: int = 0


def _fit_scores(x_fit, y_fit, x_evals, columns, c_grid, config
                ) -> dict[float, list[np.ndarray]]:
  """{C: decision values [N_eval, C] on each eval set} (zeros in the columns not fitted)."""
  scaler = StandardScaler().fit(x_fit)
  xf = scaler.transform(x_fit)
  xes = [scaler.transform(x) for x in x_evals]
  grid = sorted(c_grid)
  outs = {c: [np.zeros((len(x), y_fit.shape[1])) for x in x_evals] for c in grid}
  # One BLAS thread: these fits are small (a few thousand rows, D <= a few thousand), and a
  # multi-threaded BLAS made each lbfgs step 10-30x slower on a shared 2-core machine.
  with warnings.catch_warnings(), threadpool_limits(limits=1):
    # A C at the weak end of the grid may stop at max_iter; the grid search judges it anyway.
    warnings.simplefilter("ignore", ConvergenceWarning)
    for j in columns:
      # Along increasing C each fit starts from the previous solution (same optimum, fewer
      # iterations: the grid costs little more than one fit).
      model = LogisticRegression(max_iter=config.max_iter, random_state=config.seed,
                                 warm_start=True)
      for c in grid:
        model.set_params(C=c).fit(xf, y_fit[:, j])
        for out, xe in zip(outs[c], xes):
          out[:, j] = model.decision_function(xe)
  return outs


def _macro(y, s, columns) -> float:
  keep, _ = auc_lib.two_label_classes(y[:, columns], [str(j) for j in columns])
  if not keep:
    return np.nan
  cols = [columns[k] for k in keep]
  return auc_lib.macro_auc(y[:, cols], s[:, cols], [str(j) for j in cols]).macro


def _cv_macro(x, y, columns, c_grid, config) -> dict[float, float]:
  """{C: mean over folds of the held-out macro AUC}."""
  folds = KFold(config.cv_folds, shuffle=True, random_state=config.seed).split(x)
  scores: dict[float, list[float]] = {}
  for fit, held in folds:
    cols, _ = cells.trainable(y[fit], [str(j) for j in range(y.shape[1])])
    cols = [j for j in cols if j in columns]
    if cols:
      for c, (s_held,) in _fit_scores(x[fit], y[fit], [x[held]], cols, c_grid,
                                      config).items():
        scores.setdefault(c, []).append(_macro(y[held], s_held, cols))
  return {c: float(np.nanmean(v)) if np.any(~np.isnan(v)) else np.nan
          for c, v in scores.items()}


def train_and_score(x_train, y_train, x_sel, y_sel, x_rep, y_rep, classes, counts_BxN,
                    config: LogRegConfig = LogRegConfig(), split: str = "test") -> dict:
  """Chooses C, fits on the training subset, scores the evaluated split.

  Args:
    x_train, y_train: [N, D] features and [N, C] 0/1 labels of the training subset.
    x_sel, y_sel: the selection split (val), or None when the evaluated split is val.
    x_rep, y_rep: the evaluated split.
    classes: C names.
    counts_BxN: bootstrap resample counts of the evaluated records.
    config: C grid and solver settings.
    split: name of the evaluated split.

  Returns:
    A `cells.score` dict plus C, selection ('val' | 'cv' | 'default'), selection_auc,
    selection_by_c and train_rows.
  """
  x_train = np.asarray(x_train, np.float64)
  y_train = np.asarray(y_train)
  n = len(x_train)
  columns, untrained, meta, cell = cells.start_probe(y_train, y_rep, classes, counts_BxN, split,
                                                     "logreg")
  if cell is not None:
    return cell
  x_rep = np.asarray(x_rep, np.float64)
  by_c, rep_by_c = {}, {}
  if x_sel is not None and len(x_sel):
    selection = "val"
    fits = _fit_scores(x_train, y_train, [np.asarray(x_sel, np.float64), x_rep], columns,
                       config.c_grid, config)
    for c, (s_sel, s_rep) in fits.items():
      by_c[c], rep_by_c[c] = _macro(np.asarray(y_sel), s_sel, columns), s_rep
  elif n >= 2 * config.cv_folds:
    selection = "cv"
    by_c = _cv_macro(x_train, y_train, columns, config.c_grid, config)
  finite = {c: v for c, v in by_c.items() if not np.isnan(v)}
  if finite:
    best = max(finite, key=lambda c: (finite[c], -c))  # ties: the stronger regularisation
  else:
    best, selection = 1.0, "default"
  s_rep = (rep_by_c[best] if best in rep_by_c
           else _fit_scores(x_train, y_train, [x_rep], columns, [best], config)[best][0])
  out = cells.score(y_rep, s_rep, classes, counts_BxN, columns=columns, untrained=untrained,
                    split=split)
  out.update(meta, C=best, selection=selection, selection_auc=finite.get(best),
             selection_by_c={str(c): v for c, v in by_c.items()})
  return out
