"""PNG plots of an evaluation: per-class AUC (or AUPRC) bars and macro values with their 95 %
bootstrap intervals per task, and a t-SNE map of the evaluated ECGs.

The dashed chance line is 0.5 for ROC-AUC; for AUPRC the chance level of a class is its
prevalence, drawn per class (per-class bars) or left out (macro values of several tasks).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from etils import epath
from sklearn.manifold import TSNE


def _save(fig, path: epath.Path) -> None:
  """Writes the figure as PNG through epath (a local folder or object storage)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    fig.savefig(f, dpi=110, format="png")


def _with_interval(v) -> tuple[float, float, float]:
  return tuple(v) if isinstance(v, (tuple, list)) else (v, np.nan, np.nan)


def plot_per_class_auc(path: epath.Path, title: str,
                  series: dict[str, dict[str, float | tuple[float, float, float]]],
                  skipped: list[str], metric: str = "ROC-AUC",
                  chance: float | dict[str, float] | None = 0.5) -> epath.Path:
  """Grouped bars: one group per class, one bar per series (e.g. zero-shot, probe 100 %).

  Args:
    path: output PNG.
    title: figure title.
    series: {series name: {class: value or (value, low, high)}}; intervals are drawn as error
      bars.
    skipped: classes without a value in any series (listed in the title, not drawn).
    metric: the y-axis name ('ROC-AUC', 'AUPRC').
    chance: the chance level: one line (0.5 for ROC-AUC), a tick per class ({class:
      prevalence} for AUPRC), or None.

  Returns:
    `path`.
  """
  classes = sorted({c for s in series.values() for c in s})
  width = 0.8 / max(len(series), 1)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(classes) * len(series) + 2), 4.4))
  x = np.arange(len(classes))
  for i, (name, aucs) in enumerate(series.items()):
    vals = np.array([_with_interval(aucs.get(c, np.nan)) for c in classes], np.float64)
    err = np.abs(np.stack([vals[:, 0] - vals[:, 1], vals[:, 2] - vals[:, 0]]))
    ax.bar(x + (i - (len(series) - 1) / 2) * width, vals[:, 0], width, label=name,
           yerr=np.where(np.isnan(err), 0, err), error_kw={"lw": 0.6, "capsize": 1})
  if isinstance(chance, dict):
    ax.hlines([chance.get(c, np.nan) for c in classes], x - 0.45, x + 0.45, color="grey",
              lw=0.8, ls="--", label="chance (prevalence)", zorder=3)
  elif chance is not None:
    ax.axhline(chance, color="grey", lw=0.8, ls="--")
  ax.set_xticks(x, classes, rotation=60, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel(metric)
  note = f" (no {metric}: {', '.join(skipped)})" if skipped else ""
  ax.set_title(title + note, fontsize=9)
  ax.legend(fontsize=6, loc="lower right")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path


def macro_intervals(path: epath.Path, title: str,
                    rows: dict[str, tuple[float, float, float]], metric: str = "ROC-AUC",
                    chance: float | None = 0.5) -> epath.Path:
  """Macro value of every metric of one task as a point with its interval (one line each).

  Args:
    path: output PNG.
    title: figure title.
    rows: {metric label: (value, low, high)}.
    metric: the x-axis name ('ROC-AUC', 'AUPRC').
    chance: x of the dashed chance line (None for AUPRC: each class has its own).

  Returns:
    `path`.
  """
  names = list(rows)
  vals = np.array([rows[n] for n in names], np.float64)
  y = np.arange(len(names))[::-1]
  fig, ax = plt.subplots(figsize=(7.0, 0.22 * len(names) + 1.2))
  err = np.abs(np.stack([vals[:, 0] - vals[:, 1], vals[:, 2] - vals[:, 0]]))
  ax.errorbar(vals[:, 0], y, xerr=np.where(np.isnan(err), 0, err), fmt="o", ms=3, lw=1,
              capsize=2)
  if chance is not None:
    ax.axvline(chance, color="grey", lw=0.8, ls="--")
  ax.set_yticks(y, names, fontsize=7)
  ax.set_xlim(0, 1)
  ax.set_xlabel(f"macro {metric} (95% bootstrap interval)")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path


def tsne_map(path: epath.Path, title: str, emb_NxD: np.ndarray, y_NxC: np.ndarray,
             classes: tuple[str, ...], seed: int = 0) -> epath.Path | None:
  """2-D t-SNE (scikit-learn) of embeddings, coloured by class (several labels: 'multiple').

  Returns:
    `path`, or None when there are too few points for t-SNE.
  """
  n = len(emb_NxD)
  if n < 5:
    return None
  xy = TSNE(n_components=2, perplexity=float(min(30, max(2, (n - 1) // 3))), init="pca",
            random_state=seed).fit_transform(np.asarray(emb_NxD, np.float64))
  labels = np.where(y_NxC.sum(1) == 1, y_NxC.argmax(1), -1)
  labels = np.where(y_NxC.sum(1) == 0, -2, labels)
  fig, ax = plt.subplots(figsize=(5.5, 5))
  for k, name in [(j, c) for j, c in enumerate(classes)] + [(-1, "multiple"), (-2, "none")]:
    sel = labels == k
    if sel.any():
      ax.scatter(xy[sel, 0], xy[sel, 1], s=8, label=f"{name} ({int(sel.sum())})",
                 alpha=0.8, c="lightgrey" if k < 0 else None)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, markerscale=2)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path
