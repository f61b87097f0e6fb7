"""Linear probing of frozen features: a sigmoid-BCE linear head trained with optax.

Protocol (MERL, ICML 2024, so numbers are comparable): the label fraction r of the train
split is taken with `train_test_split(train_size=r, random_state=42)` on the table's row order
(all rows at r = 1). Features are standardised with the train subset's statistics. The head is
trained for `epochs`; after each epoch the val and test macro AUCs are computed.

Two test numbers are reported, labelled apart:
  * `test_auc`: test AUC at the epoch with the best VAL AUC (clean model selection);
  * `test_auc_max_over_epochs`: the best test AUC over epochs, as MERL's code reports it
    (selection on the test set; optimistic, given only for comparison with published tables).
When the val split has no usable class (e.g. no val rows), the last epoch is used and the
result says so.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.model_selection import train_test_split

from cgdmer_jax.evaluators import auc as auc_lib


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  epochs: int = 100
  batch_size: int = 256
  lr: float = 1e-3
  weight_decay: float = 1e-4
  seed: int = 0


def label_subset(n: int, fraction: float) -> np.ndarray:
  """Row indices of the train subset for a label fraction in (0, 1], as MERL takes it."""
  if not 0 < fraction <= 1:
    raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
  idx = np.arange(n)
  if fraction >= 1 or n <= 1:
    return idx
  if int(np.floor(n * fraction)) < 1:  # sklearn floors a float train_size
    # Too few rows for this fraction: keep one, and say so in the result.
    return np.sort(train_test_split(idx, train_size=1, random_state=42)[0])
  return np.sort(train_test_split(idx, train_size=fraction, random_state=42)[0])


def _bce(params, x, y, w):
  logits = x @ params["w"] + params["b"]
  per = optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
  return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


@functools.lru_cache(maxsize=None)
def _optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
  # One object per setting, so the jitted epoch (static in `tx`) is not retraced per call.
  return optax.adamw(lr, weight_decay=weight_decay)


@jax.jit
def _predict(params, x):
  return x @ params["w"] + params["b"]


@functools.partial(jax.jit, static_argnames=("tx",))
def _epoch(params, opt_state, x_NbxBxD, y_NbxBxC, w_NbxB, tx):
  def step(carry, batch):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(_bce)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss
  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                             (x_NbxBxD, y_NbxBxC, w_NbxB))
  return params, opt_state, losses.mean()


def train_and_score(x_train, y_train, x_val, y_val, x_test, y_test, classes,
                    config: ProbeConfig = ProbeConfig()) -> dict:
  """Trains the head and scores val/test after every epoch.

  Args:
    x_*: [N, D] float features; y_*: [N, C] 0/1 labels; classes: C names.
    config: optimisation settings.

  Returns:
    A JSON-ready dict: test_auc (val-selected), test_auc_max_over_epochs, val_auc,
    best_epoch, selection ('val' or 'last_epoch'), per-class test AUCs and skipped classes.
  """
  n, d = x_train.shape
  c = len(classes)
  if n == 0:
    raise ValueError("no training rows for the linear probe")
  mean = x_train.mean(0, keepdims=True)
  std = x_train.std(0, keepdims=True) + 1e-6
  def norm(x):
    x = np.asarray(x, np.float32)
    if len(x) == 0:  # an empty split (e.g. no val rows) may come without a feature width
      return np.zeros((0, d), np.float32)
    return ((x - mean) / std).astype(np.float32)
  xt, xv, xs = norm(x_train), norm(x_val), norm(x_test)

  bs = min(config.batch_size, n)
  nb = -(-n // bs)
  rng = np.random.default_rng(config.seed)
  tx = _optimizer(float(config.lr), float(config.weight_decay))
  params = {"w": jnp.zeros((d, c), jnp.float32), "b": jnp.zeros((c,), jnp.float32)}
  opt_state = tx.init(params)

  history = []
  for epoch in range(config.epochs):
    # Every epoch sees each row once; the last batch is padded with zero-weight rows so the
    # scanned step has one static shape.
    perm = np.concatenate([rng.permutation(n), np.zeros(nb * bs - n, np.int64)])
    w = np.concatenate([np.ones(n, np.float32), np.zeros(nb * bs - n, np.float32)])
    params, opt_state, _ = _epoch(params, opt_state, xt[perm].reshape(nb, bs, d),
                                  y_train[perm].astype(np.float32).reshape(nb, bs, c),
                                  w.reshape(nb, bs), tx)
    val = (auc_lib.macro_auc(y_val, np.asarray(_predict(params, xv)), classes) if len(xv)
           else None)
    test = auc_lib.macro_auc(np.asarray(y_test).reshape(-1, c),
                             np.asarray(_predict(params, xs)), classes)
    history.append((val, test))

  val_ok = [v is not None and not np.isnan(v.macro) for v, _ in history]
  if any(val_ok):
    best = int(np.nanargmax([v.macro if ok else np.nan for (v, _), ok in zip(history, val_ok)]))
    selection = "val"
  else:
    best, selection = len(history) - 1, "last_epoch"
  val_best, test_best = history[best]
  test_max = max(range(len(history)), key=lambda i: np.nan_to_num(history[i][1].macro, nan=-1))
  return {
      "test_auc": test_best.macro,
      "test_auc_max_over_epochs": history[test_max][1].macro,
      "val_auc": None if val_best is None else val_best.macro,
      "best_epoch": best + 1,
      "selection": selection,
      "train_rows": int(n),
      "test_per_class": test_best.per_class,
      "test_skipped": test_best.skipped,
  }
