"""The ECG backbone: normalisation, lead-wise patching, token embedding, visible-only encoder.

Tokenisation follows ST-MEM (Na et al., ICLR 2024): every lead is cut into non-overlapping
patches of `patch_size` samples, each patch is linearly projected to a token, and a token
gets a learnable lead embedding plus a fixed 1-D sin-cos embedding of its time patch (no
[CLS]/[SEP] tokens; features are mean-pooled downstream). Tokens are flattened lead-major,
`n = lead * num_time_patches + t` (`patching.py`, the grid `masking.py` samples on).

Masked encoding follows MAE (He et al., CVPR 2022): only the visible tokens, gathered by
`keep_idx`, enter the transformer, so a 72% mask saves ~72% of the backbone's compute.
Attention over ECG tokens is not key-masked (as ST-MEM); tokens of missing leads or of the
zero padding are excluded later, from pooling and from the reconstruction loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cgdmer_jax.models import layers
from cgdmer_jax.models import normalize
from cgdmer_jax.models import patching

# 0.01 mV (or 0.01 of a z-scored lead's std): a flat or zero-padded patch maps to log 0.01.
STATS_STD_FLOOR = 1e-2


def patch_stats(patches_BxKxP: jax.Array) -> jax.Array:
  """[mean, log(std + 0.01)] of each patch, float32 [B, K, 2] (`model.patch_stats`)."""
  x = patches_BxKxP.astype(jnp.float32)
  return jnp.stack([jnp.mean(x, -1), jnp.log(jnp.std(x, -1) + STATS_STD_FLOOR)], axis=-1)


class ECGEncoder(nnx.Module):
  """Lead-patch embedding + pre-norm ViT over the visible tokens (the ECG backbone)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    self.patch_size = m.patch_size
    self.num_leads = m.num_leads
    self.num_time_patches = patching.num_time_patches(config)  # checks T % P
    self.normalize = config.data.normalize
    if self.normalize not in normalize.METHODS:
      raise ValueError(f"unknown data.normalize {self.normalize!r}")
    dtype = layers.compute_dtype(m.dtype)
    self.width = m.ecg_width
    self.patch_proj = layers.dense(m.patch_size, m.ecg_width, dtype=dtype, rngs=rngs)
    # ST-MEM's patch embedding: LayerNorm(patch) -> Linear -> LayerNorm(token).
    self.patch_norm = bool(m.patch_norm)
    if self.patch_norm:
      self.patch_in_norm = layers.layer_norm(m.patch_size, rngs=rngs)
      self.patch_out_norm = layers.layer_norm(m.ecg_width, rngs=rngs)
    # The patch LayerNorm removes each patch's offset and scale, so the tokens alone carry no
    # amplitude (QRS voltage, ST level, one lead against another); `patch_stats` adds them
    # back as a projection of the patch's mean and log standard deviation.
    self.patch_stats = bool(m.patch_stats)
    if self.patch_stats and not self.patch_norm:
      raise ValueError("model.patch_stats=True (the default) needs model.patch_norm=True; "
                       "with a bare Dense patch embedding set model.patch_stats=False (the "
                       "tokens already carry the amplitude)")
    if self.patch_stats:
      self.stats_proj = layers.dense(2, m.ecg_width, dtype=dtype, rngs=rngs)
    self.lead_embed = nnx.Param(layers.EMBED_INIT(rngs.params(), (m.num_leads, m.ecg_width)))
    self.backbone = layers.Stack(
        m.ecg_width, m.ecg_depth, m.ecg_heads, m.mlp_ratio, dtype=dtype,
        impl=layers.attention_impl(m.attention, dtype), scan=m.scan_layers, remat=m.remat,
        rngs=rngs)

  def position_table(self) -> jax.Array:
    """Lead embedding + sin-cos time embedding of every token, float32 [N, D]."""
    time_TxD = layers.sincos_1d(self.num_time_patches, self.width)
    table_CxTxD = self.lead_embed[...][:, None, :] + time_TxD[None, :, :]
    return table_CxTxD.reshape(-1, self.width)

  def patches(self, ecg_BxCxT: jax.Array, valid_len_B: jax.Array,
              lead_mask_BxC: jax.Array) -> jax.Array:
    """Normalised ECG cut into patches, float32 [B, N, P] (also the reconstruction target)."""
    x = normalize.normalize_ecg(ecg_BxCxT, valid_len_B, lead_mask_BxC, self.normalize)
    return patching.patchify(x, self.patch_size)

  def embed(self, patches_BxKxP: jax.Array, idx_BxK: jax.Array) -> jax.Array:
    """Tokens of the given patches at grid positions `idx`, float32 [B, K, D]."""
    pos_BxKxD = jnp.take(self.position_table(), idx_BxK, axis=0)
    if not self.patch_norm:
      return self.patch_proj(patches_BxKxP).astype(jnp.float32) + pos_BxKxD
    tok = self.patch_out_norm(self.patch_proj(self.patch_in_norm(patches_BxKxP)))
    if self.patch_stats:
      tok = tok + self.stats_proj(patch_stats(patches_BxKxP)).astype(jnp.float32)
    return tok + pos_BxKxD

  def __call__(self, ecg_BxCxT: jax.Array, valid_len_B: jax.Array, lead_mask_BxC: jax.Array,
               keep_idx_BxV: jax.Array | None = None) -> dict[str, jax.Array]:
    """Encodes the visible tokens.

    Args:
      ecg_BxCxT: ECG in millivolts; normalised here (`normalize.py`, `data.normalize`).
      valid_len_B: int samples before zero padding.
      lead_mask_BxC: bool, True where the lead was recorded.
      keep_idx_BxV: visible token indices (from `masking.sample_ecg_mask`); None = all.

    Returns:
      dict: `tokens` float32 [B, V, D] backbone features of the visible tokens, `valid` bool
      [B, V] (see `patching.token_valid`), `patches` float32 [B, N, P] every normalised patch.
    """
    C, T = ecg_BxCxT.shape[1:]
    if C != self.num_leads or T != self.num_time_patches * self.patch_size:
      raise ValueError(f"ECG shape {ecg_BxCxT.shape} does not match the config "
                       f"({self.num_leads} leads x {self.num_time_patches * self.patch_size})")
    B = ecg_BxCxT.shape[0]
    patches_BxNxP = self.patches(ecg_BxCxT, valid_len_B, lead_mask_BxC)
    N = patches_BxNxP.shape[1]
    if keep_idx_BxV is None:
      keep_idx_BxV = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))
    # Gather before embedding: masked patches never enter the computation at all.
    visible_BxVxP = patching.gather_tokens(patches_BxNxP, keep_idx_BxV)
    tokens_BxVxD = self.backbone(self.embed(visible_BxVxP, keep_idx_BxV))
    valid_BxN = patching.token_valid(valid_len_B, lead_mask_BxC, self.num_time_patches,
                            self.patch_size)
    return dict(tokens=tokens_BxVxD, valid=patching.gather_tokens(valid_BxN, keep_idx_BxV),
                patches=patches_BxNxP)
