"""MERL's linear probe of frozen features: one linear layer, sigmoid BCE, Adam, batch 16.

As MERL's `finetune/main_single.py` with the settings of its `sub_script/*.sh` (ICML 2024), so
that numbers are comparable with published tables:
  * the raw backbone features (no standardisation) into `nn.Linear`'s default init
    (uniform in +-1/sqrt(D) for weights and bias);
  * `torch.optim.Adam(lr=1e-3, weight_decay=1e-4)` (an L2 term added to the gradient, not
    decoupled decay), batch 16 with a partial last batch, reshuffled every epoch, 100 epochs;
  * MERL's `MultiStepLR(milestones=[40], gamma=0.1)` is stepped after every batch and again
    after every epoch, so the rate drops to 1e-4 after its 40th step (the first 40 batches
    or fewer) and stays there: reproduced by `lr_drop_at`;
  * after every epoch the macro AUC of the evaluated split is recorded.

Two numbers are reported, labelled apart:
  * `auc`: the evaluated split at the epoch with the best macro AUC on the selection split
    (val when the evaluated split is test); with no selection split (evaluating val itself)
    the last epoch, a fixed budget: `selection` says which;
  * `auc_max_over_epochs`: the best evaluated-split AUC over epochs, as MERL reports it
    (selection on the evaluated split; optimistic, only for comparison with published tables).
Classes without a positive or a negative among the training rows are trained (as MERL does:
their columns are independent) but left out of the macro mean and listed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.model_selection import train_test_split

from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import cells


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  epochs: int = 100            # sub_script/*.sh: --epochs 100
  batch_size: int = 16         # --batch-size 16
  lr: float = 1e-3             # --learning-rate 0.001
  weight_decay: float = 1e-4   # main_single.py default, Adam's L2 term
  lr_drop_at: int | None = 40  # MultiStepLR milestone, counted in scheduler steps (see above)
  seed: int = 0


def label_subset(n: int, fraction: float) -> np.ndarray:
  """Row indices of the train subset for a label fraction in (0, 1], as MERL takes it.

  MERL calls `train_test_split(table, train_size=r, random_state=42)` on the whole train
  table, so `n` must be the table's row count (before unreadable rows are dropped).
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
  idx = np.arange(n)
  if fraction >= 1 or n <= 1:
    return idx
  if int(np.floor(n * fraction)) < 1:  # sklearn floors a float train_size
    # Too few rows for this fraction: keep one (the cell will say it cannot be trained).
    return np.sort(train_test_split(idx, train_size=1, random_state=42)[0])
  return np.sort(train_test_split(idx, train_size=fraction, random_state=42)[0])


def lr_per_step(config: ProbeConfig, batches_per_epoch: int) -> np.ndarray:
  """[epochs, batches] learning rate of every optimizer step, MERL's schedule included."""
  t = np.arange(config.epochs * batches_per_epoch).reshape(config.epochs, batches_per_epoch)
  # Scheduler steps before optimizer step t: one per batch so far plus one per finished epoch.
  sched = t + t // batches_per_epoch
  lr = np.full(t.shape, config.lr, np.float32)
  if config.lr_drop_at is not None:
    lr = np.where(sched >= config.lr_drop_at, np.float32(0.1 * config.lr), lr)
  return lr.astype(np.float32)


def _bce(params, x, y, w):
  logits = x @ params["w"] + params["b"]
  per = optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
  return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


@functools.lru_cache(maxsize=None)
def _adam_l2(weight_decay: float) -> optax.GradientTransformation:
  # torch Adam's weight_decay adds wd * param to the gradient before the moments.
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam())


@functools.partial(jax.jit, static_argnames=("tx",))
def _train(params, x_NxD, y_NxC, perm_ExNbxB, w_ExNbxB, lr_ExNb, x_sel, x_rep, tx):
  """All epochs; returns the selection- and evaluated-split logits after every epoch."""
  def step(carry, batch):
    params, opt_state = carry
    idx, w, lr = batch
    grads = jax.grad(_bce)(params, x_NxD[idx], y_NxC[idx], w)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: -lr * u, updates)
    return (optax.apply_updates(params, updates), opt_state), None

  def epoch(carry, inputs):
    carry, _ = jax.lax.scan(step, carry, inputs)
    p = carry[0]
    return carry, (x_sel @ p["w"] + p["b"], x_rep @ p["w"] + p["b"])

  _, (sel_ExNsxC, rep_ExNrxC) = jax.lax.scan(epoch, (params, tx.init(params)),
                                             (perm_ExNbxB, w_ExNbxB, lr_ExNb))
  return sel_ExNsxC, rep_ExNrxC


def _epoch_macros(y_NxC, logits_ExNxC, columns) -> np.ndarray:
  """Macro AUC over `columns` after every epoch (NaN when no column is scorable)."""
  if y_NxC is None or not len(y_NxC) or not columns:
    return np.full(len(logits_ExNxC), np.nan)
  ones = np.ones((1, len(y_NxC)))
  out = []
  for logits in logits_ExNxC:
    aucs = [bootstrap.weighted_auc(y_NxC[:, j], logits[:, j], ones)[0] for j in columns]
    aucs = [a for a in aucs if not np.isnan(a)]
    out.append(np.mean(aucs) if aucs else np.nan)
  return np.asarray(out)


def train_and_score(x_train, y_train, x_sel, y_sel, x_rep, y_rep, classes, counts_BxN,
                    config: ProbeConfig = ProbeConfig(), split: str = "test") -> dict:
  """Trains MERL's head on the training rows and scores the evaluated split.

  Args:
    x_train, y_train: [N, D] features and [N, C] 0/1 labels of the training subset.
    x_sel, y_sel: the selection split (val), or None when the evaluated split is val.
    x_rep, y_rep: the evaluated split.
    classes: C names.
    counts_BxN: bootstrap resample counts of the evaluated records.
    config: optimisation settings (MERL's by default).
    split: name of the evaluated split.

  Returns:
    A `cells.score` dict plus auc_max_over_epochs, selection ('val' | 'last_epoch'),
    selection_auc, best_epoch and train_rows.
  """
  n, d = np.shape(x_train)
  c = len(classes)
  columns, untrained, meta, cell = cells.start_probe(y_train, y_rep, classes, counts_BxN, split,
                                                     "merl")
  if cell is not None:
    return cell
  bs = min(config.batch_size, n)
  nb = -(-n // bs)
  rng = np.random.default_rng(config.seed)
  bound = 1.0 / np.sqrt(d)
  params = {"w": jnp.asarray(rng.uniform(-bound, bound, (d, c)), jnp.float32),
            "b": jnp.asarray(rng.uniform(-bound, bound, (c,)), jnp.float32)}
  # Every epoch sees each row once; the last batch is padded with zero-weight rows so the
  # scanned step has one static shape, and its loss is the mean over its real rows.
  perm = np.stack([np.concatenate([rng.permutation(n), np.zeros(nb * bs - n, np.int64)])
                   for _ in range(config.epochs)]).reshape(config.epochs, nb, bs)
  w = np.tile(np.concatenate([np.ones(n), np.zeros(nb * bs - n)]).astype(np.float32),
              (config.epochs, 1)).reshape(config.epochs, nb, bs)
  has_sel = x_sel is not None and len(x_sel) > 0
  xs = np.asarray(x_sel if has_sel else np.zeros((1, d)), np.float32)
  sel_logits, rep_logits = _train(
      params, jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train, jnp.float32),
      jnp.asarray(perm, jnp.int32), jnp.asarray(w), jnp.asarray(lr_per_step(config, nb)),
      jnp.asarray(xs), jnp.asarray(x_rep, jnp.float32), _adam_l2(float(config.weight_decay)))
  rep_logits = np.asarray(rep_logits)
  sel_macro = (_epoch_macros(np.asarray(y_sel), np.asarray(sel_logits), columns) if has_sel
               else np.full(config.epochs, np.nan))
  rep_macro = _epoch_macros(np.asarray(y_rep), rep_logits, columns)
  if np.any(~np.isnan(sel_macro)):
    best, selection = int(np.nanargmax(sel_macro)), "val"
  else:
    best, selection = config.epochs - 1, "last_epoch"
  out = cells.score(y_rep, rep_logits[best], classes, counts_BxN, columns=columns,
                    untrained=untrained, split=split)
  finite = rep_macro[~np.isnan(rep_macro)]
  out.update(meta, selection=selection, best_epoch=best + 1,
             selection_auc=None if np.isnan(sel_macro[best]) else float(sel_macro[best]),
             auc_max_over_epochs=float(finite.max()) if out["auc"] is not None else None)
  return out
