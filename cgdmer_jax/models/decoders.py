"""The generative heads: the light ECG decoder (masked patches) and the masked-token text head.

Both read the concatenation of the shared and the specific token features of their modality,
projected by one Dense ("concat -> dense"): the reconstruction needs what the report explains
(shared) and what it does not (specific), and a learned mixing lets the decoder weight them
rather than forcing a fixed sum.

ECG decoder (MAE's asymmetric decoder, ST-MEM's lead-aware variant): visible tokens enter at
`dec_width`, one learned `mask_embed` stands for every hidden token, every token gets the
decoder's own lead embedding plus sin-cos time position, `dec_depth` blocks run over all N
tokens, and a Dense predicts the P samples of each hidden patch. Attention is permutation
equivariant once positions are added, so the sequence is simply [visible; masked] instead of
being un-shuffled back into grid order (no scatter), and the predictions are its last M rows.

Text head (BERT's MLM head): gather the K masked positions, Dense + GELU + LayerNorm, then
logits against the (tied) token embedding table plus a per-token output `bias`. With a
pretrained BERT tower whose checkpoint has its masked-LM head, the Dense + act + LayerNorm +
bias after the concat projection are that head's (`bert.MLMHead`, loaded with the tower).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cgdmer_jax.models import bert
from cgdmer_jax.models import bert_tower
from cgdmer_jax.models import disentangle
from cgdmer_jax.models import layers
from cgdmer_jax.models import patching


class ECGDecoder(nnx.Module):
  """Reconstructs the hidden patches from the visible tokens' shared + specific features."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    dtype = layers.compute_dtype(m.dtype)
    self.width = m.dec_width
    self.num_time_patches = patching.num_time_patches(config)
    self.in_proj = layers.dense(disentangle.shared_width(m) + m.ecg_width, m.dec_width,
                                dtype=dtype, rngs=rngs)
    self.mask_embed = nnx.Param(layers.EMBED_INIT(rngs.params(), (m.dec_width,)))
    self.lead_embed = nnx.Param(layers.EMBED_INIT(rngs.params(), (m.num_leads, m.dec_width)))
    self.blocks = layers.Stack(
        m.dec_width, m.dec_depth, m.dec_heads, m.mlp_ratio, dtype=dtype,
        impl=layers.attention_impl(m.attention, dtype), scan=m.scan_layers, remat=m.remat,
        rngs=rngs)
    self.pred = layers.dense(m.dec_width, m.patch_size, dtype=dtype, rngs=rngs)

  def __call__(self, shared_BxVxS: jax.Array, specific_BxVxD: jax.Array,
               keep_idx_BxV: jax.Array, masked_idx_BxM: jax.Array) -> jax.Array:
    """Predicted patches at the hidden positions, float32 [B, M, P]."""
    time_TxW = layers.sincos_1d(self.num_time_patches, self.width)
    pos_NxW = (self.lead_embed[...][:, None, :] + time_TxW[None]).reshape(-1, self.width)
    x_vis = self.in_proj(jnp.concatenate([shared_BxVxS, specific_BxVxD], axis=-1))
    x_vis_BxVxW = x_vis.astype(jnp.float32) + jnp.take(pos_NxW, keep_idx_BxV, axis=0)
    x_msk_BxMxW = self.mask_embed[...] + jnp.take(pos_NxW, masked_idx_BxM, axis=0)
    h = self.blocks(jnp.concatenate([x_vis_BxVxW, x_msk_BxMxW], axis=1))
    M = masked_idx_BxM.shape[1]
    return self.pred(h[:, -M:]).astype(jnp.float32)


class TextHead(nnx.Module):
  """Masked-token logits from the shared + specific report token features."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    self.dtype = layers.compute_dtype(m.dtype)
    self.in_proj = layers.dense(disentangle.shared_width(m) + m.text_width, m.text_width,
                                dtype=self.dtype, rngs=rngs)
    t = bert_tower.settings(m)
    if bert_tower.is_bert(m) and t.mlm_head:
      self.mlm = bert.MLMHead(bert.BertConfig.from_dict(t.bert), dtype=self.dtype, rngs=rngs)
      return
    self.norm = layers.layer_norm(m.text_width, rngs=rngs)
    self.bias = nnx.Param(jnp.zeros((m.vocab_size,), jnp.float32))

  def __call__(self, shared_BxLxS: jax.Array, specific_BxLxD: jax.Array,
               positions_BxK: jax.Array, token_table_VxD: jax.Array) -> jax.Array:
    """Logits over the vocabulary at the masked positions, float32 [B, K, vocab]."""
    x_BxKxF = patching.gather_tokens(jnp.concatenate([shared_BxLxS, specific_BxLxD], -1),
                                positions_BxK)
    if hasattr(self, "mlm"):
      return self.mlm(self.in_proj(x_BxKxF).astype(jnp.float32), token_table_VxD)
    h_BxKxD = self.norm(jax.nn.gelu(self.in_proj(x_BxKxF), approximate=False))
    logits = jnp.einsum("bkd,vd->bkv", h_BxKxD.astype(self.dtype),
                        token_table_VxD.astype(self.dtype),
                        preferred_element_type=jnp.float32)
    return logits + self.bias[...]
