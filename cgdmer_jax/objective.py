"""The pure functional face of the model: init, loss, encoders and parameter counts.

The trainer, evaluators and exporter never touch `nnx` modules: they hold `(graphdef, params)`
from `init` and call pure functions of `params` that `nnx.merge` inside, so `jax.jit`, Orbax
and optax only see plain pytrees (the functional loop of the Flax performance guide).
"""

from __future__ import annotations

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cgdmer_jax import losses
from cgdmer_jax import masking
from cgdmer_jax.models import cgdmer
from cgdmer_jax.models import patching

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


def abstract_init(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, Params]:
  """(graphdef, params of `jax.ShapeDtypeStruct`s): `init`'s structure, nothing allocated.

  The restore target of checkpoints and exports, and the trainer's shape source.
  """
  return jax.eval_shape(lambda: init(config, 0))


def loss_fn(params: Params, graphdef: nnx.GraphDef, batch: dict, rng: jax.Array,
            config: ml_collections.ConfigDict, step: jax.Array | None = None,
            balance: dict[str, jax.Array] | None = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Samples the masks, runs the model and returns the weighted loss. Pure; jit it.

  Args:
    params: from `init` (or the optimizer).
    graphdef: from `init`.
    batch: the batch dict (see `CGDMER.__call__`).
    rng: PRNG key of the step (ECG and text masks use `fold_in(rng, 0/1)`).
    config: full config.
    step: the optimizer step, for the terms' ramp-in (`losses.term_scales`); None: the
      full weights.
    balance: the terms' multipliers (`balance.multipliers`), or None.

  Returns:
    (loss, metrics of float32 scalars; see `losses.total`). The whole batch at once: the
    trainer's chunked form of the same loss is `accumulate.py`.
  """
  masks = masking.sample_masks(rng, batch, config)
  return forward_loss(params, graphdef, batch, masks, config, step, balance)


def forward_loss(params: Params, graphdef: nnx.GraphDef, batch: dict, masks: dict,
                 config: ml_collections.ConfigDict, step: jax.Array | None = None,
                 balance: dict[str, jax.Array] | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`loss_fn` with the masks given (`masking.sample_masks`), e.g. for one chunk of a batch.

  Args:
    params: from `init`.
    graphdef: from `init`.
    batch: the batch dict.
    masks: the masks of these rows.
    config: full config.
    step: as in `loss_fn`.
    balance: as in `loss_fn`.

  Returns:
    (loss, metrics), as `losses.total`.
  """
  outputs = nnx.merge(graphdef, params)(batch, masks)
  return losses.total(outputs, batch, masks, config, losses.term_scales(config, step, balance))


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
  _, params = abstract_init(config)
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
  T, L = patching.num_samples(config), config.model.max_report_len
  return dict(ecg=np.zeros((batch_size, config.model.num_leads, T), np.float32),
              lead_mask=np.ones((batch_size, config.model.num_leads), bool),
              valid_len=np.full((batch_size,), T, np.int32),
              report_ids=np.zeros((batch_size, L), np.int32),
              report_len=np.zeros((batch_size,), np.int32),
              has_report=np.zeros((batch_size,), bool))
