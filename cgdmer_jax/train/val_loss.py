"""The trainer's validation pass and run fingerprints: val loss terms over a split.

`make_eval_step` fixes the masking key so every eval sees the same masks; `evaluate_loss`
weights each batch's means by its valid rows. `params_digest` is what every process logs at
the end of a run (replicas that diverged print different digests).

The reader (TensorFlow) is imported where a split is read: the step benchmark and the GPU
check import this module through the loop and run without TensorFlow.
"""

from __future__ import annotations

import hashlib
from typing import Callable
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cgdmer_jax.train import accumulate
from cgdmer_jax.train import sharding


def eval_stream(config, split: str) -> Iterator[dict[str, np.ndarray]]:
  from cgdmer_jax.data import reader
  return reader.eval_batches(config.data.dir, split=split,
                             global_batch_size=config.data.eval_batch_size,
                             on_corrupt=config.data.on_corrupt)


def make_eval_step(graphdef, config) -> Callable:
  """`(params, batch) -> metrics` with a fixed masking RNG, so evals are comparable.

  The metrics are the batch's means over its valid rows, plus `rows`, the count of those
  (batch `mask`), by which `evaluate_loss` weights the batch.
  """
  # A fixed masking key for every eval, distinct from the training stream (steps >= 0).
  key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1)
  loss_fn = accumulate.make_loss_fn(graphdef, config)

  def eval_step(params, batch):
    loss, mets = loss_fn(params, batch, key)
    mets = dict(mets)
    mets["loss"] = loss
    rows_ok = batch.get("mask", jnp.ones(batch["ecg"].shape[:1], bool))
    mets["rows"] = jnp.sum(rows_ok.astype(jnp.float32))
    return mets
  return eval_step


def params_digest(params) -> str:
  """SHA-256 of this process's first local copy of every parameter.

  Logged by every process at the end of a run: with replicated parameters (mesh.fsdp = 1)
  all processes must print the same digest; a difference means the replicas diverged.
  """
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(np.asarray(leaf.addressable_data(0))).tobytes())
  return h.hexdigest()


def fetch(mets: dict[str, jax.Array]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(mets).items()}


def coupled_metrics() -> tuple[str, ...]:
  """The metrics whose value depends on the batch (and so on its size): coupled terms, total."""
  return tuple(f"loss/{t}" for t in accumulate.COUPLED_TERMS) + ("loss",)


def evaluate_loss(params, eval_step, config, mesh, split: str) -> dict[str, float]:
  """Loss terms over a split: each batch's means weighted by its valid rows.

  Padding rows (batch `mask` False) count in no batch mean, and a padded last batch (or a
  batch of padding only, on a process with fewer files) counts in proportion to the valid
  rows it holds, not as much as a full one.

  Terms that couple a batch's examples (SigLIP's negatives, the disentanglement estimate)
  and the total loss depend on the batch size: they are averaged over the split's full
  batches only (a short last batch has fewer negatives and a noisier estimate), so with
  `data.eval_batch_size == data.batch_size` (the default) they are comparable with the
  training values. A split without one full batch counts every batch, with a warning, and
  so does an eval batch size other than the training one.

  Returns:
    {'val/<metric>': value} for every metric of `eval_step` except its row count.
  """
  coupled = coupled_metrics()
  full = float(config.data.eval_batch_size)
  sums: dict[str, float] = {}
  full_sums: dict[str, float] = {}
  rows = full_rows = 0.0
  for i, local in enumerate(eval_stream(config, split)):
    if config.eval_steps and i >= config.eval_steps:
      break
    mets = fetch(eval_step(params, sharding.global_batch(local, mesh)))
    n = mets.pop("rows")
    for k, v in mets.items():
      sums[k] = sums.get(k, 0.0) + v * n
      if n == full:
        full_sums[k] = full_sums.get(k, 0.0) + v * n
    rows += n
    full_rows += n if n == full else 0.0
  out = {f"val/{k}": v / max(rows, 1.0) for k, v in sums.items()}
  if full_rows:
    out.update({f"val/{k}": full_sums[k] / full_rows for k in coupled if k in full_sums})
  elif rows:
    logging.log_first_n(logging.WARNING, "the %s split has no full batch of %d rows: its "
                        "%s average batches of other sizes", 1, split, int(full),
                        ", ".join(k for k in coupled if k in sums))
  if config.data.eval_batch_size != config.data.batch_size:
    logging.log_first_n(logging.WARNING, "val %s use batches of %d, training %d: the two are "
                        "not comparable (set data.eval_batch_size=%d)", 1, ", ".join(coupled),
                        config.data.eval_batch_size, config.data.batch_size,
                        config.data.batch_size)
  return out
