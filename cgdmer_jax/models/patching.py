"""The ECG token grid: sample and patch counts, patching, token validity, token gathering.

ECG tokens sit on a (lead x time patch) grid flattened lead-major, `n = lead *
num_time_patches + t`: `patchify` produces that order, `masking` samples on it, the ECG
encoder and decoder place their position embeddings on it and the loss weights its hidden
patches by `token_valid`. Pure `jnp` and config arithmetic; no parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections


def num_samples(config: ml_collections.ConfigDict) -> int:
  """Samples per lead, `fs * seconds`."""
  return int(round(config.data.fs * config.data.seconds))


def num_time_patches(config: ml_collections.ConfigDict) -> int:
  """Patches per lead; raises ValueError where `patch_size` does not divide the length."""
  T, P = num_samples(config), config.model.patch_size
  if P <= 0 or T % P:
    raise ValueError(
        f"ECG length T = fs * seconds = {config.data.fs} * {config.data.seconds} = {T} is not "
        f"divisible by model.patch_size = {P}; pick a patch size that divides it")
  return T // P


def patchify(x_BxCxT: jax.Array, patch_size: int) -> jax.Array:
  """[B, C, T] -> [B, C * T/P, P], token n = c * (T/P) + t."""
  B, C, T = x_BxCxT.shape
  return x_BxCxT.reshape(B, C * (T // patch_size), patch_size)


def token_valid(valid_len_B: jax.Array, lead_mask_BxC: jax.Array, num_time_patches: int,
                patch_size: int) -> jax.Array:
  """bool [B, N]: the token's lead was recorded and its patch starts before `valid_len`.

  A patch that lies entirely in the zero padding carries no signal: it is left out of
  pooling and of the reconstruction loss. A partly padded patch counts.

  Args:
    valid_len_B: int samples before zero padding.
    lead_mask_BxC: bool, True where the lead was recorded.
    num_time_patches: patches per lead.
    patch_size: samples per patch.

  Returns:
    bool [B, C * num_time_patches].
  """
  start_T = jnp.arange(num_time_patches) * patch_size
  time_ok_BxT = start_T[None, :] < valid_len_B.astype(jnp.int32)[:, None]
  ok_BxCxT = lead_mask_BxC.astype(bool)[:, :, None] & time_ok_BxT[:, None, :]
  return ok_BxCxT.reshape(ok_BxCxT.shape[0], -1)


def gather_tokens(x_BxNx_: jax.Array, idx_BxK: jax.Array) -> jax.Array:
  """x[b, idx[b, k]] for a [B, N, ...] array: [B, K, ...] (ECG patches or report tokens)."""
  idx = idx_BxK.reshape(idx_BxK.shape + (1,) * (x_BxNx_.ndim - 2))
  return jnp.take_along_axis(x_BxNx_, idx, axis=1)


def hidden_patch_weight(valid_len_B: jax.Array, lead_mask_BxC: jax.Array,
                        masked_idx_BxM: jax.Array, num_time_patches: int,
                        patch_size: int) -> jax.Array:
  """float32 [B, M]: 1 where a hidden patch carries signal (its lead recorded, not all padding).

  The per-example weight of the masked-patch loss: the model returns it as `ecg/weight`, and
  exact gradient accumulation (`accumulate.py`) sums it over the whole batch before any
  chunk runs.

  Args:
    valid_len_B: int samples before zero padding.
    lead_mask_BxC: bool, True where the lead was recorded.
    masked_idx_BxM: hidden token indices (`masking.sample_ecg_mask`'s `masked_idx`).
    num_time_patches: patches per lead.
    patch_size: samples per patch.

  Returns:
    float32 [B, M].
  """
  valid_BxN = token_valid(valid_len_B, lead_mask_BxC, num_time_patches, patch_size)
  return gather_tokens(valid_BxN, masked_idx_BxM).astype(jnp.float32)
