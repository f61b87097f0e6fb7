"""Per-term gradient diagnostics: how hard each loss term pulls on each part of the model.

The CG-DMER terms share parameters (the shared encoder, both backbones) and compete for
them: a term whose gradient is orders of magnitude smaller than another's on the same
parameters barely moves them under Adam, whose per-parameter normalisation sees the sum.
`term_gradients_fn` measures it on the step's own batch, masks and ramp-in weights: the norm
of each term's (weighted) gradient on each parameter group, and the cosine between every two
terms' gradients there (negative: the terms pull the parameters in opposing directions).

One forward pass and one batched backward pass (`jax.vmap` over the vjp with one-hot
cotangents) give every term's gradient; the trainer runs it every
`diagnostics.every_steps` steps, outside the jitted train step, so the step itself is
unchanged. With gradient accumulation (`accumulate.num_chunks` > 1) it looks at the first
chunk's rows only, to stay within one chunk's activation memory.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cgdmer_jax import losses
from cgdmer_jax import masking
from cgdmer_jax.train import accumulate
from cgdmer_jax.train import optim

# Parameter groups: the first path names that select them.
GROUPS = {
    "shared": ("disentangle", "shared"),
    "ecg_backbone": ("ecg",),
    "text_backbone": ("text",),
}


def group_of(names: list[str]) -> str | None:
  """The diagnostics group of a parameter (its path names), or None."""
  for group, prefix in GROUPS.items():
    if tuple(names[:len(prefix)]) == prefix:
      return group
  return None


def term_gradients_fn(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict
                      ) -> Callable[..., dict[str, jax.Array]]:
  """`(params, batch, rng, step, balance=None) -> metrics` of the terms' gradients (jit it).

  Args:
    graphdef: from `objective.init`.
    config: full config.

  Returns:
    The pure function. Its metrics, float32 scalars, for every active term t, every two
    terms a, b (in `losses.TERMS` order) and every group g present in the model:
    `grad_norm/<t>/<g>` (norm of t's gradient on g, weighted as the step weights it: ramp-in
    and `balance` multipliers), `grad_cos/<a>~<b>/<g>`, and `balance/grad_norm/<t>` (the
    norm of t's unweighted gradient on all groups together: what `balance.py` equalises).
  """
  terms = [k for k in losses.TERMS if config.loss[k] > 0]
  n = accumulate.num_chunks(config)

  def fn(params, batch, rng, step, balance=None):
    batch = {k: v for k, v in batch.items() if jnp.asarray(v).dtype.kind in "biuf"}
    if n > 1:
      batch = jax.tree.map(lambda x: x[0], accumulate.split_rows(batch, n))
    masks = masking.sample_masks(rng, batch, config)
    scales = losses.term_scales(config, step, balance)

    def raw_terms(p):
      outputs = nnx.merge(graphdef, p)(batch, masks)
      _, mets = losses.total(outputs, batch, masks, config, scales)
      return jnp.stack([mets[f"loss/{k}"] for k in terms])

    _, vjp = jax.vjp(raw_terms, params)
    (grads,) = jax.vmap(vjp)(jnp.eye(len(terms), dtype=jnp.float32))  # leaves [T, ...]
    dots: dict[str, jax.Array] = {}
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
      group = group_of(optim.path_names(path))
      if group is None:
        continue
      g_TxK = g.reshape(len(terms), -1).astype(jnp.float32)
      dots[group] = dots.get(group, 0.0) + g_TxK @ g_TxK.T
    scale_T = jnp.abs(jnp.stack([jnp.asarray(scales[k], jnp.float32) for k in terms]))
    out = {}
    for group, d_TxT in dots.items():
      norm_T = jnp.sqrt(jnp.diag(d_TxT))
      for i, a in enumerate(terms):
        out[f"grad_norm/{a}/{group}"] = scale_T[i] * norm_T[i]
        for j in range(i + 1, len(terms)):
          out[f"grad_cos/{a}~{terms[j]}/{group}"] = (
              d_TxT[i, j] / jnp.maximum(norm_T[i] * norm_T[j], 1e-30))
    total_T = jnp.sqrt(sum(jnp.diag(d) for d in dots.values()))
    for i, a in enumerate(terms):
      out[f"balance/grad_norm/{a}"] = total_T[i]
    return out
  return fn
