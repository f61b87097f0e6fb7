"""PNG plots of an evaluation: per-class AUC bars per task, and a t-SNE map of test ECGs."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def per_class_auc(path: pathlib.Path, title: str, series: dict[str, dict[str, float]],
                  skipped: list[str]) -> pathlib.Path:
  """Grouped bars: one group per class, one bar per series (e.g. zero-shot, probe 100 %).

  Args:
    path: output PNG.
    title: figure title.
    series: {series name: {class: AUC}}.
    skipped: classes without both labels in the evaluated set (drawn as gaps, listed).

  Returns:
    `path`.
  """
  classes = sorted({c for s in series.values() for c in s} | set(skipped))
  width = 0.8 / max(len(series), 1)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(classes) + 2), 4.2))
  x = np.arange(len(classes))
  for i, (name, aucs) in enumerate(series.items()):
    vals = [aucs.get(c, np.nan) for c in classes]
    ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
  ax.axhline(0.5, color="grey", lw=0.8, ls="--")
  ax.set_xticks(x, classes, rotation=60, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("ROC-AUC")
  note = f" (no AUC: {', '.join(skipped)})" if skipped else ""
  ax.set_title(title + note, fontsize=9)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def tsne_map(path: pathlib.Path, title: str, emb_NxD: np.ndarray, y_NxC: np.ndarray,
             classes: tuple[str, ...], seed: int = 0) -> pathlib.Path | None:
  """2-D t-SNE (scikit-learn) of embeddings, coloured by class (several labels: 'multiple').

  Returns:
    `path`, or None when there are too few points for t-SNE.
  """
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
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
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
