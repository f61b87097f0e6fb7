"""The report backbone: token + learned position embeddings and a pre-norm transformer.

(`build` picks it or the pretrained BERT-family tower of `models/bert_tower.py` from
`config.model.text`; both have this module's interface.)

Reports are SentencePiece ids `BOS ... EOS PAD...` (right padded, `data/features.py`), so
padding is excluded from attention by the key length (`key_value_seq_lengths`), which the
cuDNN kernel supports natively. BERT-style (bidirectional) attention, learned absolute
positions as in BERT; the token table is also the output layer of the masked-token head
(`decoders.TextHead`, weight tying as in BERT).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cgdmer_jax.models import bert_tower
from cgdmer_jax.models import layers


def build(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> nnx.Module:
  """The report backbone `config.model.text` selects (`TextEncoder` or `BertTextEncoder`)."""
  if bert_tower.is_bert(config.model):
    return bert_tower.BertTextEncoder(config, rngs=rngs)
  return TextEncoder(config, rngs=rngs)


class TextEncoder(nnx.Module):
  """Token + position embedding and the text transformer."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    dtype = layers.compute_dtype(m.dtype)
    self.max_len = m.max_report_len
    self.token_embed = nnx.Embed(m.vocab_size, m.text_width, param_dtype=jnp.float32,
                                 embedding_init=layers.EMBED_INIT, rngs=rngs)
    self.pos_embed = nnx.Param(layers.EMBED_INIT(rngs.params(),
                                                 (m.max_report_len, m.text_width)))
    self.backbone = layers.Stack(
        m.text_width, m.text_depth, m.text_heads, m.mlp_ratio, dtype=dtype,
        impl=layers.attention_impl(m.attention, dtype), scan=m.scan_layers, remat=m.remat,
        rngs=rngs)

  def token_table(self) -> jax.Array:
    """The token embedding table [vocab, D] (tied output layer of the masked-token head)."""
    return self.token_embed.embedding[...]

  def __call__(self, ids_BxL: jax.Array, len_B: jax.Array) -> dict[str, jax.Array]:
    """Encodes (possibly corrupted) report ids.

    Args:
      ids_BxL: int ids, right padded; L must equal `model.max_report_len`.
      len_B: int ids before padding (0 for a missing report).

    Returns:
      dict: `tokens` float32 [B, L, D], `valid` bool [B, L] (position < len), `kv_len` int32
      [B] (the key length used in attention, at least 1 so a missing report attends to its
      first PAD instead of to nothing).
    """
    L = ids_BxL.shape[1]
    if L != self.max_len:
      raise ValueError(f"report length {L} != model.max_report_len {self.max_len}")
    len_B = jnp.clip(len_B.astype(jnp.int32), 0, L)
    kv_len_B = jnp.maximum(len_B, 1)
    x_BxLxD = self.token_embed(ids_BxL.astype(jnp.int32)) + self.pos_embed[...][None]
    tokens_BxLxD = self.backbone(x_BxLxD, kv_len_B)
    valid_BxL = jnp.arange(L)[None, :] < len_B[:, None]
    return dict(tokens=tokens_BxLxD, valid=valid_BxL, kv_len=kv_len_B)
