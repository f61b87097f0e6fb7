"""ECG amplitude normalisation, applied inside the model as the first op of ECG encoding.

Batches carry millivolts; the model normalises them itself so that pretraining, evaluation and
the exported encoder share one code path and nobody can feed differently scaled inputs to a
checkpoint. Pure `jnp`, no TensorFlow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

METHODS = ("zscore", "none")

# Floor on the per-lead standard deviation, in mV: one storage quantum (1 uV, see
# `data.features.UV_PER_UNIT`). A flat or missing lead then maps to ~0 instead of having its
# quantisation noise blown up to unit variance.
STD_FLOOR_MV = 1e-3


def normalize_ecg(ecg_BxCxT: jax.Array, valid_len_B: jax.Array, lead_mask_BxC: jax.Array,
                  method: str, *, std_floor: float = STD_FLOOR_MV) -> jax.Array:
  """Normalises each record and lead over its valid samples.

  'zscore': `(x - mean) / max(std, std_floor)` with mean and (population) std taken over the
  first `valid_len` samples of each lead of each record. Padding beyond `valid_len` and
  leads with `lead_mask` False are 0 in the output, whatever the input held there.
  'none': the millivolts as given, with the same zeroing of padding and missing leads.

  Args:
    ecg_BxCxT: float ECG in millivolts.
    valid_len_B: int samples before zero padding (clipped to [0, T]).
    lead_mask_BxC: bool, True where the lead was recorded.
    method: one of `METHODS`.
    std_floor: lower bound on the standard deviation (mV), see `STD_FLOOR_MV`.

  Returns:
    float32 [B, C, T].
  """
  if method not in METHODS:
    raise ValueError(f"unknown ECG normalisation {method!r}; known: {METHODS}")
  x = ecg_BxCxT.astype(jnp.float32)
  T = x.shape[-1]
  valid_len_B = jnp.clip(valid_len_B.astype(jnp.int32), 0, T)
  valid_BxCxT = ((jnp.arange(T)[None, None, :] < valid_len_B[:, None, None])
                 & lead_mask_BxC.astype(bool)[:, :, None])
  x = jnp.where(valid_BxCxT, x, 0.0)
  if method == "none":
    return x
  # An empty record (valid_len 0) divides by 1, not 0; its output is all zeros anyway.
  count_Bx1x1 = jnp.maximum(valid_len_B, 1).astype(jnp.float32)[:, None, None]
  mean_BxCx1 = jnp.sum(x, axis=-1, keepdims=True) / count_Bx1x1
  centred = jnp.where(valid_BxCxT, x - mean_BxCx1, 0.0)
  var_BxCx1 = jnp.sum(centred * centred, axis=-1, keepdims=True) / count_Bx1x1
  std_BxCx1 = jnp.maximum(jnp.sqrt(var_BxCx1), std_floor)
  return centred / std_BxCx1
