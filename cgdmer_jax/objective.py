"""The pure functional face of the model: init, loss, encoders and parameter counts.

The trainer, evaluators and exporter never touch `nnx` modules: they hold `(graphdef, params)`
from `init` and call pure functions of `params` that `nnx.merge` inside, so `jax.jit`, Orbax
and optax only see plain pytrees (the functional loop of the Flax performance guide).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cgdmer_jax import losses, masking
from cgdmer_jax import sharding
from cgdmer_jax.models import cgdmer, ecg

Params = Any  # nnx.State of nnx.Param leaves: a pytree


def init(config: ml_collections.ConfigDict, seed: int) -> tuple[nnx.GraphDef, Params]:
  """Builds the model and splits it.

  Args:
    config: full config (model, mask, loss, data).
    seed: parameter-init seed.

  Returns:
    (graphdef, params): static structure and the float32 parameter pytree (the only state).
  """
  model = cgdmer.CGDMER(config, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


def loss_fn(params: Params, graphdef: nnx.GraphDef, batch: dict, rng: jax.Array,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Samples the masks, runs the model and returns the weighted loss. Pure; jit it.

  Args:
    params: from `init` (or the optimizer).
    graphdef: from `init`.
    batch: the batch dict (see `CGDMER.__call__`).
    rng: PRNG key of the step (ECG and text masks use `fold_in(rng, 0/1)`).
    config: full config.

  Returns:
    (loss, metrics of float32 scalars; see `losses.total`).

  With `model.batch_chunks = n > 1` the batch is run in n sequential chunks, each chunk's
  forward and backward pass before the next (see `_chunked_loss`): the same loss and
  gradients (float round-off aside) with 1/n of the activation memory.
  """
  masks = masking.sample_masks(rng, batch, config)
  n = int(config.model.get("batch_chunks", 1))
  if n > 1:
    return _chunked_loss(params, graphdef, batch, masks, config, n)
  model = nnx.merge(graphdef, params)
  outputs = model(batch, masks)
  return losses.total(outputs, batch, masks, config)


# ---------------------------------------------------------------------------------------------
# Batch chunking inside the step.

# Loss terms that are sums over examples divided by a parameter-free count: their gradient is
# the sum of the chunks' gradients. SigLIP and the disentanglement loss couple the examples.
CHUNKABLE_TERMS = ("ecg", "text")


def _term_weights(batch: dict, masks: dict, config: ml_collections.ConfigDict
                  ) -> dict[str, jax.Array]:
  """Per-example weights of the chunkable terms (what `losses.total` normalises by), [B, ...]."""
  row_ok_B = batch.get("mask", jnp.ones_like(batch["has_report"], dtype=bool)).astype(bool)
  out = {}
  if config.loss.ecg > 0:
    valid_BxN = ecg.token_valid(batch["valid_len"], batch["lead_mask"],
                                masking.num_time_patches(config), config.model.patch_size)
    out["ecg"] = (ecg.gather_tokens(valid_BxN, masks["ecg"]["masked_idx"])
                  & row_ok_B[:, None]).astype(jnp.float32)
  if config.loss.text > 0:
    text_ok_B = row_ok_B & batch["has_report"].astype(bool)
    out["text"] = masks["text"]["weights"] * text_ok_B[:, None]
  return out


def _split_rows(tree: Any, n: int) -> Any:
  """[B, ...] -> [n, B/n, ...]; row r goes to chunk r % n so each chunk stays on every device."""
  mesh = jax.sharding.get_abstract_mesh()

  def split(x):
    y = jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)
    if mesh.empty:
      return y
    return jax.lax.with_sharding_constraint(y, jax.sharding.PartitionSpec(None, sharding.DATA_AXES))
  return jax.tree.map(split, tree)


def _zero_cotangent(x: jax.Array) -> jax.Array:
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(x.shape, jax.dtypes.float0)


def _chunked_loss(params: Params, graphdef: nnx.GraphDef, batch: dict, masks: dict,
                  config: ml_collections.ConfigDict, n: int
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`loss_fn` on n sequential chunks of the batch; gradients computed chunk by chunk.

  Each term's global weighted mean is S / W with W the (parameter-free) weight sum of the
  whole batch, so chunk c contributes mean_c * W_c / W and the chunks' gradients add up to
  the gradient of the whole batch. A `jax.custom_vjp` makes the outer `jax.grad` of the
  trainer see that: its forward rule runs `value_and_grad` per chunk under `lax.scan` (only
  one chunk's activations alive at a time) and keeps the summed gradient, its backward rule
  scales it by the incoming cotangent of the loss. Metrics are not differentiable here.
  """
  w = config.loss
  coupled = [k for k in ("contrastive", "disentangle") if w[k] > 0]
  if coupled:
    raise ValueError(f"model.batch_chunks > 1 needs per-example losses only; loss.{coupled[0]} "
                     "> 0 couples the examples of the batch (set model.batch_chunks = 1)")
  B = batch["ecg"].shape[0]
  if B % n:
    raise ValueError(f"model.batch_chunks={n} does not divide the batch of {B}")
  batch = {k: v for k, v in batch.items() if jnp.asarray(v).dtype.kind in "biuf"}
  weights = _term_weights(batch, masks, config)
  totals = {k: jnp.maximum(jnp.sum(v), 1.0) for k, v in weights.items()}
  chunks = _split_rows((batch, masks, weights), n)
  model_fn = lambda p: nnx.merge(graphdef, p)  # noqa: E731

  def chunk_loss(p, chunk):
    batch_c, masks_c, weights_c = chunk
    _, mets = losses.total(model_fn(p)(batch_c, masks_c), batch_c, masks_c, config)
    # The chunk's share of each global mean; `losses.total` floors a weight sum at 1 too.
    scaled = {f"loss/{k}": mets[f"loss/{k}"] * jnp.maximum(jnp.sum(weights_c[k]), 1.0)
              / totals[k] * (jnp.sum(weights_c[k]) > 0) for k in weights}
    loss = sum(w[k] * scaled[f"loss/{k}"] for k in weights)
    return loss, scaled

  def forward(p, batch, masks):
    del batch, masks  # closed over through `chunks`
    # The parameters ride in the carry: NNX refuses to merge a closed-over outer tracer.
    def body(carry, chunk):
      p, acc = carry
      loss, mets = chunk_loss(p, chunk)
      return (p, jax.tree.map(jnp.add, acc, (loss, mets))), None
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(chunk_loss, p, jax.tree.map(lambda x: x[0], chunks)))
    return jax.lax.scan(body, (p, zeros), chunks)[0][1]

  def forward_with_grads(p, batch, masks):
    grad_fn = jax.value_and_grad(chunk_loss, has_aux=True)
    def body(acc, chunk):
      (loss, mets), g = grad_fn(p, chunk)
      return jax.tree.map(jnp.add, acc, ((loss, mets), g)), None
    out0 = jax.eval_shape(grad_fn, p, jax.tree.map(lambda x: x[0], chunks))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out0)
    (loss_mets, grads), _ = jax.lax.scan(body, zeros, chunks)
    return loss_mets, (grads, batch, masks)

  def backward(res, cotangents):
    grads, batch, masks = res
    g_loss = cotangents[0]
    return (jax.tree.map(lambda g: g * g_loss, grads), jax.tree.map(_zero_cotangent, batch),
            jax.tree.map(_zero_cotangent, masks))

  chunked = jax.custom_vjp(forward)
  chunked.defvjp(forward_with_grads, backward)
  loss, mets = chunked(params, batch, masks)
  mets = dict(mets)
  mets["loss"] = loss
  return loss, mets


def encode_ecg_fn(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict
                  ) -> Callable[..., dict[str, jax.Array]]:
  """`(params, ecg_BxCxT, valid_len_B=None, lead_mask_BxC=None) -> dict` for eval/export.

  The dict is `CGDMER.encode_ecg`'s: `embedding`, `shared`, `specific`, `probe`.
  """
  del config  # the graphdef already carries every static choice

  def encode(params, ecg_BxCxT, valid_len_B=None, lead_mask_BxC=None):
    return nnx.merge(graphdef, params).encode_ecg(ecg_BxCxT, valid_len_B, lead_mask_BxC)
  return encode


def encode_text_fn(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict
                   ) -> Callable[..., dict[str, jax.Array]]:
  """`(params, ids_BxL, len_B) -> dict(embedding, shared, specific)` for eval/export."""
  del config

  def encode(params, ids_BxL, len_B):
    return nnx.merge(graphdef, params).encode_text(ids_BxL, len_B)
  return encode


def _group(path: tuple) -> str:
  """Parameter group of a state path, for the size table."""
  top = str(path[0])
  if top == "disentangle":
    name = str(path[1])
    return "shared" if name == "shared" else name.replace("_", " ")
  return {"ecg": "ecg backbone", "text": "text backbone", "ecg_decoder": "ecg decoder",
          "text_head": "text head", "siglip": "siglip"}.get(top, "projections")


def param_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter counts per group and in total, measured from the model without allocating it.

  Args:
    config: full config.

  Returns:
    dict group -> count (`ecg backbone`, `text backbone`, `shared`, `ecg specific`,
    `text specific`, `ecg decoder`, `text head`, `projections`, `siglip`, adapters), plus
    `total` and `ecg encoder` (what `encode_ecg` uses: backbone + shared + ECG specific +
    ECG projection).
  """
  _, params = jax.eval_shape(lambda: init(config, 0))
  counts: dict[str, int] = {}
  for path, leaf in nnx.to_flat_state(params):
    group = _group(path)
    counts[group] = counts.get(group, 0) + int(np.prod(leaf.get_value().shape))
    if path[0] == "ecg_proj" or (path[0] == "ecg") or (
        path[0] == "disentangle" and str(path[1]) in ("shared", "ecg_specific", "ecg_adapter")):
      counts["ecg encoder"] = counts.get("ecg encoder", 0) + int(np.prod(leaf.get_value().shape))
  counts["total"] = sum(v for k, v in counts.items() if k != "ecg encoder")
  return counts


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jnp.ndarray]:
  """An all-zero batch of the right shapes and dtypes (shape inference, warm-up compiles)."""
  T, L = masking.num_samples(config), config.model.max_report_len
  return dict(ecg=np.zeros((batch_size, config.model.num_leads, T), np.float32),
              lead_mask=np.ones((batch_size, config.model.num_leads), bool),
              valid_len=np.full((batch_size,), T, np.int32),
              report_ids=np.zeros((batch_size, L), np.int32),
              report_len=np.zeros((batch_size,), np.int32),
              has_report=np.zeros((batch_size,), bool))
