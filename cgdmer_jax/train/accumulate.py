"""Exact gradient accumulation: the step's loss and gradients computed chunk by chunk.

`model.batch_chunks` and `optim.grad_accum_steps` name one mechanism (their product is the
number of chunks n): the global batch is split into n chunks of B/n rows and `lax.scan` runs
one chunk's forward and backward pass at a time, so activations of only one chunk are alive.
It is exact, not an approximation: the masks are sampled once for the whole batch, and every
per-example term is a weighted mean S / W whose weight sum W (`losses.term_weights`, parameter
free) is taken over the whole batch before any chunk runs, so chunk c contributes
mean_c * W_c / W and the chunks' losses and gradients add up to those of the whole batch.

Terms that couple the examples of a batch (SigLIP's negatives, the disentanglement
correlations) have no such split; `check_batch_size` refuses them with chunks (train/checks.py
calls it before anything compiles).
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from cgdmer_jax import losses
from cgdmer_jax import masking
from cgdmer_jax import objective
from cgdmer_jax.models import patching
from cgdmer_jax.train import sharding

COUPLED_TERMS = ("contrastive", "disentangle")


def num_chunks(config: ml_collections.ConfigDict) -> int:
  """The number of chunks the step runs a batch in.

  Args:
    config: full config.

  Returns:
    n = `model.batch_chunks * optim.grad_accum_steps` (1: the batch in one piece).
  """
  return int(config.model.batch_chunks) * int(config.optim.grad_accum_steps)


def check_batch_size(config: ml_collections.ConfigDict, batch_size: int) -> None:
  """Raises ValueError where the batch cannot be accumulated exactly in `num_chunks` chunks.

  Args:
    config: full config.
    batch_size: the global batch the step sees.
  """
  n = num_chunks(config)
  if n == 1:
    return
  coupled = [k for k in COUPLED_TERMS if config.loss[k] > 0]
  if coupled:
    raise ValueError(
        f"model.batch_chunks * optim.grad_accum_steps = {n} > 1 needs per-example losses only; "
        f"loss.{coupled[0]} > 0 couples the examples of the batch (set both to 1, or use a "
        "variant without it, e.g. ecg_mask_only)")
  if batch_size % n:
    raise ValueError(f"model.batch_chunks * optim.grad_accum_steps = {n} does not divide the "
                     f"batch of {batch_size}")


def split_rows(tree: Any, n: int) -> Any:
  """[B, ...] -> [n, B/n, ...]; row r goes to chunk r % n so each chunk stays on every device.

  Each device's contiguous block of rows holds B/(n*devices) rows of every chunk, so the
  split needs no communication.

  Args:
    tree: pytree of [B, ...] arrays (batch, masks, weights).
    n: chunks; divides B.

  Returns:
    The same pytree of [n, B/n, ...] arrays, chunk axis first (for `lax.scan`).
  """
  mesh = jax.sharding.get_abstract_mesh()

  def split(x):
    y = jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)
    if mesh.empty:
      return y
    return jax.lax.with_sharding_constraint(y, P(None, sharding.DATA_AXES))
  return jax.tree.map(split, tree)


def _weights(batch: dict, masks: dict, config: ml_collections.ConfigDict) -> dict:
  """`losses.term_weights` of the whole batch, with the model's `ecg/weight` definition."""
  ecg_w = None
  if config.loss.ecg > 0:
    ecg_w = patching.hidden_patch_weight(
        batch["valid_len"], batch["lead_mask"], masks["ecg"]["masked_idx"],
        patching.num_time_patches(config), config.model.patch_size)
  return losses.term_weights(ecg_w, batch, masks, config)


def _kind_weights(weights: dict, masks: dict) -> dict[str, jax.Array]:
  """{'ecg_mse/<kind>': the ECG patch weights of that masking step} (`losses.mse_by_mask_kind`)."""
  if "ecg" not in weights or "masked_kind" not in masks.get("ecg", {}):
    return {}
  kind = masks["ecg"]["masked_kind"]
  return {f"ecg_mse/{name}": weights["ecg"] * (kind == i)
          for i, name in enumerate(masking.MASK_KINDS)}


def _chunk_share(graphdef, config: ml_collections.ConfigDict, totals: dict, step=None,
                 balance=None):
  """`(params, chunk) -> (loss, metrics)`: the chunk's share of the whole batch's means."""
  w = losses.term_scales(config, step, balance)

  def share(params, chunk):
    batch_c, masks_c, weights_c = chunk
    _, mets = objective.forward_loss(params, graphdef, batch_c, masks_c, config)
    # `losses.total` floors a chunk's weight sum at 1, as the whole batch's is floored.
    scaled = {f"loss/{k}": mets[f"loss/{k}"] * jnp.maximum(jnp.sum(weights_c[k]), 1.0)
              / totals[k] * (jnp.sum(weights_c[k]) > 0) for k in weights_c}
    loss = sum(w[k] * scaled[f"loss/{k}"] for k in weights_c)
    # The masked-ECG error per masking step, as shares of the whole batch's means too.
    for name, kind_w in _kind_weights(weights_c, masks_c).items():
      scaled[name] = (mets[name] * jnp.maximum(jnp.sum(kind_w), 1.0) / totals[name]
                      * (jnp.sum(kind_w) > 0))
    return loss, scaled
  return share


def _prepare(batch: dict, rng: jax.Array, config: ml_collections.ConfigDict, n: int):
  """Masks and weights of the whole batch; its chunks; the weight totals."""
  check_batch_size(config, batch["ecg"].shape[0])
  batch = {k: v for k, v in batch.items() if jnp.asarray(v).dtype.kind in "biuf"}
  masks = masking.sample_masks(rng, batch, config)
  weights = _weights(batch, masks, config)
  totals = {k: jnp.maximum(jnp.sum(v), 1.0)
            for k, v in {**weights, **_kind_weights(weights, masks)}.items()}
  return split_rows((batch, masks, weights), n), totals


def _zeros_like_out(fn, *args):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *args))


def make_loss_and_grads_fn(graphdef, config: ml_collections.ConfigDict) -> Callable:
  """`(params, batch, rng, step=None, balance=None) -> ((loss, metrics), grads)`, exactly.

  `step` (the optimizer step) sets the terms' ramp-in weights and `balance` their
  multipliers (`losses.term_scales`).

  Args:
    graphdef: from `objective.init`.
    config: full config (`num_chunks` chunks).

  Returns:
    The pure function; with one chunk it is `value_and_grad(objective.loss_fn)`.
  """
  n = num_chunks(config)
  whole = jax.value_and_grad(
      functools.partial(objective.loss_fn, graphdef=graphdef, config=config), has_aux=True)
  if n == 1:
    return lambda params, batch, rng, step=None, balance=None: whole(
        params, batch=batch, rng=rng, step=step, balance=balance)

  def loss_and_grads(params, batch, rng, step=None, balance=None):
    chunks, totals = _prepare(batch, rng, config, n)
    grad_fn = jax.value_and_grad(_chunk_share(graphdef, config, totals, step, balance),
                                 has_aux=True)

    def body(acc, chunk):
      return jax.tree.map(jnp.add, acc, grad_fn(params, chunk)), None
    first = jax.tree.map(lambda x: x[0], chunks)
    ((loss, mets), grads), _ = jax.lax.scan(body, _zeros_like_out(grad_fn, params, first),
                                            chunks)
    return (loss, dict(mets, loss=loss)), grads
  return loss_and_grads


def make_loss_fn(graphdef, config: ml_collections.ConfigDict) -> Callable:
  """`(params, batch, rng) -> (loss, metrics)`, chunk by chunk like `make_loss_and_grads_fn`.

  Forward only (evaluation): the same chunks, so the memory of one chunk's activations.
  """
  n = num_chunks(config)
  if n == 1:
    return lambda params, batch, rng: objective.loss_fn(params, graphdef, batch, rng, config)

  def loss(params, batch, rng):
    chunks, totals = _prepare(batch, rng, config, n)
    share = _chunk_share(graphdef, config, totals)

    # The parameters ride in the carry: NNX refuses to merge a closed-over outer tracer.
    def body(carry, chunk):
      p, acc = carry
      return (p, jax.tree.map(jnp.add, acc, share(p, chunk))), None
    first = jax.tree.map(lambda x: x[0], chunks)
    (_, (total, mets)), _ = jax.lax.scan(body, (params, _zeros_like_out(share, params, first)),
                                         chunks)
    return total, dict(mets, loss=total)
  return loss
