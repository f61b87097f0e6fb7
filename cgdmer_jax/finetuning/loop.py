"""Fine-tuning one cell (model x task x label fraction): epochs, early stopping, checkpoints.

Data parallel on one mesh: every local device on a 'data' axis, parameters and optimizer
state replicated, each batch sharded by rows; the batch is padded to a multiple of the device
count with zero-weight rows, so every step has one static shape (one compile per shape).

Epoch 0 scores the selection split before any update (`val_curve[0]`, the start the training
must beat); after each epoch the selection macro AUC is appended and the parameters with the
best one are kept (the start included). Training stops after `patience` epochs without a
better AUC or at `epochs`; the kept parameters score the reported split. Without a selection
split with a scorable class the last epoch's parameters are scored (`selection` says so).

A checkpoint is written after every epoch (Orbax, in `ckpt_dir`: params, optimizer state,
the best parameters and, as JSON, the epoch, the selection curve, the best epoch and AUC, the
epochs without improvement, the data-order seed and the training seconds so far). The order
of epoch e is a function of (seed, e) alone, so a run resumed from its latest checkpoint
computes exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cgdmer_jax import progress as progress_lib
from cgdmer_jax.evaluators import auc as auc_lib
from cgdmer_jax.finetuning import config as config_lib
from cgdmer_jax.finetuning import data
from cgdmer_jax.finetuning import model
from data_pipelines import tfrecord

ITEMS = ("params", "opt_state", "best", "meta")
MAX_IN_FLIGHT = 2  # training steps dispatched ahead of the host


class StaleCheckpointError(ValueError):
  """A cell's checkpoint was written with other settings than this run's."""


class Budget:
  """Epochs this process may still train (`--max_epochs_per_run`; 0 = no limit)."""

  def __init__(self, epochs: int = 0):
    self.left = int(epochs) if epochs else None

  def exhausted(self) -> bool:
    return self.left is not None and self.left <= 0

  def take(self) -> None:
    if self.left is not None:
      self.left -= 1


@dataclasses.dataclass
class Cell:
  """What one cell trains on, selects on (None: the last epoch) and is scored on."""
  train: data.Split
  select: data.Split | None
  select_columns: list[int]
  report: data.Split


@dataclasses.dataclass
class Outcome:
  scores: np.ndarray       # [N, C] logits of the reported split, selected parameters
  best_epoch: int
  epochs_run: int
  val_curve: list[float | None]  # selection macro AUC after epoch 0, 1, ... (None: no split)
  train_seconds: float


def make_mesh() -> jax.sharding.Mesh:
  """Every local device on one 'data' axis."""
  return jax.sharding.Mesh(np.asarray(jax.local_devices()), ("data",))


def padded_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """`batch_size` rounded up to a multiple of the device count."""
  n = mesh.size
  return -(-batch_size // n) * n


def _abstract(tree: Any, sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.dtype(x.dtype),
                                                  sharding=sharding), tree)


def _path(path) -> epath.Path:
  text = os.fspath(path)
  return epath.Path(text if tfrecord.is_object_storage(text) else os.path.abspath(text))


class _Runner:
  """The jitted steps of one cell on the mesh."""

  def __init__(self, net: model.Network, tx, mesh, size: int, keep):
    self.rep = NamedSharding(mesh, P())
    self.rows = NamedSharding(mesh, P("data"))
    self.size, self.keep = size, keep
    train_step, score_step = model.steps(net, tx)
    self.train_step = jax.jit(train_step, donate_argnums=(0, 1),
                              out_shardings=(self.rep, self.rep, self.rep))
    self.score_step = jax.jit(score_step, out_shardings=self.rep)

  def put(self, batch: dict) -> dict:
    return jax.device_put(batch, self.rows)

  def scores(self, params, split: data.Split) -> np.ndarray:
    """Logits [N, C] of every record of `split`, in order."""
    out = []
    for start in range(0, len(split), self.size):
      idx = np.arange(start, min(start + self.size, len(split)))
      b = self.put(data.batch(split, idx, self.size, self.keep))
      out.append(np.asarray(self.score_step(params, b))[:len(idx)])
    return np.concatenate(out) if out else np.zeros((0, split.y.shape[1]), np.float32)


def epoch_order(n: int, size: int, batches: int, seed: int, epoch: int) -> np.ndarray:
  """Training-row order of one epoch, a function of (seed, epoch) alone.

  One shuffled pass (the last batch partial) when `batches` covers the rows once; more
  batches than that (`min_steps_per_epoch` on a small subset) take further passes, each
  reshuffled, so every row is seen equally often up to the last pass.
  """
  rng = np.random.default_rng([seed, epoch])
  passes = 1 if batches == -(-n // size) else -(-batches * size // n)
  return np.concatenate([rng.permutation(n) for _ in range(passes)])


def _selection_auc(runner: _Runner, params, cell: Cell) -> float | None:
  if cell.select is None:
    return None
  cols = cell.select_columns
  s = runner.scores(params, cell.select)
  names = [str(j) for j in cols]
  return float(auc_lib.macro_auc(cell.select.y[:, cols], s[:, cols], names).macro)


def run(net: model.Network, params0: model.Params, cell: Cell,
        config: config_lib.FinetuneConfig, *, mesh: jax.sharding.Mesh, ckpt_dir,
        fingerprint: str, keep: np.ndarray | None = None, budget: Budget | None = None,
        progress: bool = True, desc: str = "finetune") -> Outcome | None:
  """Fine-tunes one cell from its latest checkpoint (or from `params0`) to the end.

  Args:
    net: the network (`model.build`).
    params0: its initial parameters.
    cell: the training, selection and reported records.
    config: the fine-tuning settings.
    mesh: the 'data' mesh (`make_mesh`).
    ckpt_dir: this cell's checkpoint folder.
    fingerprint: the settings' digest; a checkpoint with another one is refused.
    keep: bool [12] lead set (None: all leads).
    budget: epochs this process may still train.
    progress: progress bars.
    desc: the progress bar's label.

  Returns:
    The outcome, or None when the budget ran out first (the checkpoint holds the progress).

  Raises:
    StaleCheckpointError: the checkpoint belongs to other settings.
  """
  budget = budget or Budget()
  size = padded_batch_size(config.batch_size, mesh)
  n = len(cell.train)
  nb = max(-(-n // size), config.min_steps_per_epoch)  # small subsets: repeated passes
  scales = model.param_scales(params0, net.depth, config.layer_decay, config.freeze_blocks,
                              net.feature)
  tx = model.optimizer(config, scales, nb)
  runner = _Runner(net, tx, mesh, size, keep)
  manager = ocp.CheckpointManager(_path(ckpt_dir), item_names=ITEMS,
                                  options=ocp.CheckpointManagerOptions(
                                      max_to_keep=1, create=True,
                                      enable_async_checkpointing=False))
  try:
    latest = manager.latest_step()
    if latest is None and budget.exhausted():
      return None
    if latest is None:
      params = jax.device_put(params0, runner.rep)
      opt_state = jax.device_put(tx.init(params0), runner.rep)
      curve = [_selection_auc(runner, params, cell)]
      best = jax.tree.map(jnp.copy, params)
      meta = {"fingerprint": fingerprint, "epoch": 0, "val_curve": curve, "best_epoch": 0,
              "best_auc": curve[0], "bad_epochs": 0, "data_seed": config.seed,
              "train_seconds": 0.0}
      _save(manager, 0, params, opt_state, best, meta)
    else:
      abstract_params = _abstract(params0, runner.rep)
      got = manager.restore(latest, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params),
          opt_state=ocp.args.StandardRestore(
              _abstract(jax.eval_shape(tx.init, params0), runner.rep)),
          best=ocp.args.StandardRestore(abstract_params),
          meta=ocp.args.JsonRestore()))
      meta = dict(got["meta"])
      if meta.get("fingerprint") != fingerprint:
        raise StaleCheckpointError(
            f"{ckpt_dir} holds a fine-tune with other settings (model, data or flags); "
            "rerun with those settings or another --out")
      params, opt_state, best = got["params"], got["opt_state"], got["best"]
    has_select = cell.select is not None
    # One bar over the batches of every epoch: nested bars garble a log file.
    bar = progress_lib.bar(total=config.epochs * nb, initial=meta["epoch"] * nb, desc=desc,
                           unit="batch", disable=not progress)
    while meta["epoch"] < config.epochs and not (has_select
                                                 and meta["bad_epochs"] >= config.patience):
      if budget.exhausted():
        bar.close()
        return None
      budget.take()
      t0 = time.perf_counter()
      epoch = meta["epoch"]
      perm = epoch_order(n, size, nb, meta["data_seed"], epoch)
      in_flight = []
      for k in range(nb):
        b = runner.put(data.batch(cell.train, perm[k * size:(k + 1) * size], size, keep))
        params, opt_state, loss = runner.train_step(params, opt_state, b)
        # Steps run asynchronously: wait for the one before, so at most two batches are on
        # the device (memory bounded whatever the epoch's length) and the bar tells the truth.
        in_flight.append(loss)
        if len(in_flight) > MAX_IN_FLIGHT:
          in_flight.pop(0).block_until_ready()
        bar.update(1)
      auc = _selection_auc(runner, params, cell)
      meta["epoch"] = epoch + 1
      meta["val_curve"] = meta["val_curve"] + [auc]
      if has_select and auc is not None and (meta["best_auc"] is None
                                             or auc > meta["best_auc"]):
        best = jax.tree.map(jnp.copy, params)
        meta.update(best_epoch=epoch + 1, best_auc=auc, bad_epochs=0)
      else:
        meta["bad_epochs"] += 1
      meta["train_seconds"] += time.perf_counter() - t0
      _save(manager, meta["epoch"], params, opt_state, best, meta)
      bar.set_postfix(epoch=meta["epoch"], select_auc="-" if auc is None else f"{auc:.3f}")
    bar.close()
    final = best if has_select else params
    return Outcome(scores=runner.scores(final, cell.report),
                   best_epoch=int(meta["best_epoch"] if has_select else meta["epoch"]),
                   epochs_run=int(meta["epoch"]), val_curve=list(meta["val_curve"]),
                   train_seconds=float(meta["train_seconds"]))
  finally:
    manager.close()


def _save(manager: ocp.CheckpointManager, epoch: int, params, opt_state, best, meta) -> None:
  manager.save(epoch, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
      best=ocp.args.StandardSave(best), meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()
