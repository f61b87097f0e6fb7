"""CG-DMER's disentanglement: one modality-SHARED encoder and per-modality SPECIFIC encoders.

Backbone token features of either modality go through
  (a) the shared encoder: one set of weights applied to ECG and report tokens alike, which is
      what makes its output a common space (contrasted, and aligned across modalities), and
  (b) that modality's own specific encoder, which keeps what the other modality cannot
      explain (pushed away from the shared features by `losses.disentangle_loss`).
Each is `shared_depth` / `specific_depth` pre-norm blocks plus a final LayerNorm; depth 0
gives a LayerNorm + Dense. The shared encoder works at `shared_width` (default: the ECG
width); a modality whose backbone width differs enters it through its own linear adapter
(`ecg_adapter` / `text_adapter`), only created where the widths differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cgdmer_jax.models import layers

MODALITIES = ("ecg", "text")


def shared_width(model_config: ml_collections.ConfigDict) -> int:
  """Width of the shared encoder: `model.shared_width`, or the ECG width when 0/absent."""
  return model_config.shared_width or model_config.ecg_width


def heads_for(width: int, model_config: ml_collections.ConfigDict) -> int:
  """Heads of a disentanglement stack: the ECG head size (width / heads) is kept."""
  head_dim = model_config.ecg_width // model_config.ecg_heads
  if width % head_dim:
    raise ValueError(f"width {width} is not a multiple of the ECG head size {head_dim}")
  return width // head_dim


def token_encoder(width_in: int, width: int, depth: int, m: ml_collections.ConfigDict, *,
                  rngs: nnx.Rngs) -> nnx.Module:
  """`depth` blocks + LayerNorm at `width` (width_in == width), or LayerNorm + Dense."""
  dtype = layers.compute_dtype(m.dtype)
  if depth == 0:
    return layers.NormDense(width_in, width, dtype=dtype, rngs=rngs)
  return layers.Stack(width, depth, heads_for(width, m), m.mlp_ratio, dtype=dtype,
                      impl=layers.attention_impl(m.attention, dtype), scan=m.scan_layers,
                      remat=m.remat, rngs=rngs)


class Disentangler(nnx.Module):
  """The shared encoder and the specific encoder of each modality in `modalities`."""

  def __init__(self, config: ml_collections.ConfigDict, modalities: tuple[str, ...], *,
               rngs: nnx.Rngs):
    m = config.model
    self.modalities = tuple(modalities)
    ds = shared_width(m)
    widths = dict(ecg=m.ecg_width, text=m.text_width)
    dtype = layers.compute_dtype(m.dtype)
    for mod in self.modalities:
      if mod not in MODALITIES:
        raise ValueError(f"unknown modality {mod!r}")
      if widths[mod] != ds:
        setattr(self, f"{mod}_adapter", layers.dense(widths[mod], ds, dtype=dtype, rngs=rngs))
    self.shared = token_encoder(ds, ds, m.shared_depth, m, rngs=rngs)
    if "ecg" in self.modalities:
      self.ecg_specific = token_encoder(m.ecg_width, m.ecg_width, m.specific_depth, m,
                                        rngs=rngs)
    if "text" in self.modalities:
      self.text_specific = token_encoder(m.text_width, m.text_width, m.specific_depth, m,
                                         rngs=rngs)

  def __call__(self, modality: str, tokens_BxNxD: jax.Array,
               kv_len_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Shared and specific token features of one modality.

    Args:
      modality: 'ecg' or 'text' (one this module was built for).
      tokens_BxNxD: backbone token features.
      kv_len_B: key length for attention (reports: the padding is masked), or None.

    Returns:
      (shared float32 [B, N, shared_width], specific float32 [B, N, modality width]).
    """
    if modality not in self.modalities:
      raise ValueError(f"no {modality!r} encoders in this model (built for {self.modalities})")
    x_shared = tokens_BxNxD
    adapter = getattr(self, f"{modality}_adapter", None)
    if adapter is not None:
      x_shared = adapter(x_shared).astype(jnp.float32)
    shared_BxNxS = self.shared(x_shared, kv_len_B)
    specific_BxNxD = getattr(self, f"{modality}_specific")(tokens_BxNxD, kv_len_B)
    return shared_BxNxS, specific_BxNxD
