"""A BERT-family encoder in Flax NNX with Hugging Face `BertModel`'s math.

Owns the architecture config of a BERT checkpoint (`BertConfig`, the fields of its
`config.json` that decide the math), the encoder (word + position + token-type embeddings
and LayerNorm, post-LayerNorm blocks, the pooler) and the masked-LM prediction head
(`BertForMaskedLM`'s `cls.predictions`: Dense + activation + LayerNorm, then logits against
the tied word-embedding table plus a bias). Loading a checkpoint folder is
`models/bert_checkpoint.py`.

A block is HF's `BertLayer` without dropout (pretraining of this project runs without it):
  h = LN1(x + Attn(x));  out = LN2(h + W2 act(W1 h))
with the config's `layer_norm_eps` (1e-12 for BERT, not the 1e-6 of the rest of the model)
and `hidden_act` ('gelu' is the exact erf form, as in HF). Attention is `layers.Attention`, the
attention of every other tower (so `model.attention` picks its implementation here too); its
fused `qkv` kernel is HF's query, key and value weights side by side. Padding is excluded
by the key length: reports are right padded.

Blocks are unrolled (a Python list), not scanned: freezing the first K of them
(`freeze_layers`) then masks whole parameters, and a checkpoint's layer i is block i.

Precision as in `layers`: float32 parameters, matmuls in the compute dtype, the residual
stream, LayerNorms and softmax in float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cgdmer_jax.models import layers

# hidden_act values of HF's ACT2FN that we reproduce, with the jax function of each.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}

# model_type values whose checkpoints have BertModel's weights and math.
MODEL_TYPES = ("bert",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a BERT `config.json` that decide the computation (HF names and defaults)."""

  vocab_size: int
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0

  @classmethod
  def from_hf(cls, d: dict[str, Any], *, source: str = "config.json") -> "BertConfig":
    """Reads a Hugging Face config dict, refusing what this port does not compute.

    Args:
      d: the parsed `config.json`.
      source: where `d` came from, for error messages.

    Returns:
      BertConfig.

    Raises:
      ValueError: not a BERT config, or an activation / position embedding type / option
        whose math this module does not implement.
    """
    model_type = d.get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"{source}: model_type {model_type!r} is not a BERT-family encoder "
                       f"(supported: {MODEL_TYPES})")
    pos = d.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(f"{source}: position_embedding_type {pos!r} is not supported "
                       "(only 'absolute')")
    if d.get("is_decoder") or d.get("add_cross_attention"):
      raise ValueError(f"{source}: a decoder / cross-attention BERT is not a report encoder")
    if "vocab_size" not in d:
      raise ValueError(f"{source}: no vocab_size")
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: d[k] for k in names if k in d and d[k] is not None}
    cfg = cls(**kw)
    cfg.validate(source)
    return cfg

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
    """From `to_dict`'s output (e.g. `config.model.text.bert` of a resolved config)."""
    cfg = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
    cfg.validate("config.model.text.bert")
    return cfg

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def validate(self, source: str) -> None:
    """Raises ValueError naming `source` on an inconsistent configuration."""
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"{source}: hidden_act {self.hidden_act!r} is not supported "
                       f"(known: {sorted(ACTIVATIONS)})")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"{source}: hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_attention_heads}")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"{source}: {name} must be >= 1, got {getattr(self, name)}")


def _layer_norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
                       rngs=rngs)


def _embed(num: int, width: int, rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(num, width, param_dtype=jnp.float32, embedding_init=layers.EMBED_INIT,
                   rngs=rngs)


class Embeddings(nnx.Module):
  """Word + absolute position + token-type embeddings, then LayerNorm (HF `BertEmbeddings`)."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.word = _embed(cfg.vocab_size, cfg.hidden_size, rngs)
    self.position = _embed(cfg.max_position_embeddings, cfg.hidden_size, rngs)
    self.token_type = _embed(cfg.type_vocab_size, cfg.hidden_size, rngs)
    self.norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)

  def __call__(self, ids_BxL: jax.Array, token_type_BxL: jax.Array | None) -> jax.Array:
    L = ids_BxL.shape[1]
    if token_type_BxL is None:
      # HF's default token_type_ids are zeros: row 0 of the table for every position.
      type_1xLxD = self.token_type.embedding[...][0][None, None]
    else:
      type_1xLxD = self.token_type(token_type_BxL.astype(jnp.int32))
    x = (self.word(ids_BxL.astype(jnp.int32)) + self.position.embedding[...][None, :L]
         + type_1xLxD)
    return self.norm(x)


class Layer(nnx.Module):
  """One post-LayerNorm BERT block (HF `BertLayer`, no dropout)."""

  def __init__(self, cfg: BertConfig, *, dtype: jnp.dtype, impl: str | None, rngs: nnx.Rngs):
    D = cfg.hidden_size
    self.act = ACTIVATIONS[cfg.hidden_act]
    self.attn = layers.Attention(D, cfg.num_attention_heads, dtype=dtype, impl=impl, rngs=rngs)
    self.norm1 = _layer_norm(D, cfg.layer_norm_eps, rngs)
    self.fc1 = layers.dense(D, cfg.intermediate_size, dtype=dtype, rngs=rngs)
    self.fc2 = layers.dense(cfg.intermediate_size, D, dtype=dtype, rngs=rngs)
    self.norm2 = _layer_norm(D, cfg.layer_norm_eps, rngs)

  def __call__(self, x_BxLxD: jax.Array, kv_len_B: jax.Array | None) -> jax.Array:
    h_BxLxD = self.norm1(x_BxLxD + self.attn(x_BxLxD, kv_len_B).astype(jnp.float32))
    mlp = self.fc2(self.act(self.fc1(h_BxLxD)))
    return self.norm2(h_BxLxD + mlp.astype(jnp.float32))


class MLMHead(nnx.Module):
  """HF's `BertLMPredictionHead`: Dense + act + LayerNorm, tied decoder + per-token bias."""

  def __init__(self, cfg: BertConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.act = ACTIVATIONS[cfg.hidden_act]
    self.transform = layers.dense(cfg.hidden_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
    self.norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))

  def __call__(self, h_BxKxD: jax.Array, token_table_VxD: jax.Array) -> jax.Array:
    """Logits over the vocabulary, float32 [B, K, vocab]."""
    h_BxKxD = self.norm(self.act(self.transform(h_BxKxD)))
    logits = jnp.einsum("bkd,vd->bkv", h_BxKxD.astype(self.dtype),
                        token_table_VxD.astype(self.dtype), preferred_element_type=jnp.float32)
    return logits + self.bias[...]


class BertModel(nnx.Module):
  """HF `BertModel` (embeddings, encoder, pooler) with an optional masked-LM head.

  `stop_gradient_after=K > 0` stops gradients at the output of block K: the embeddings and
  the first K blocks then get none, and their backward pass is not computed (what freezing
  them costs nothing for; the optimizer mask is what keeps them fixed).
  """

  def __init__(self, cfg: BertConfig, *, mlm_head: bool = False, pooler: bool = True,
               dtype: jnp.dtype = jnp.float32, impl: str | None = None, remat: bool = False,
               stop_gradient_after: int = 0, rngs: nnx.Rngs):
    if not 0 <= stop_gradient_after <= cfg.num_hidden_layers:
      raise ValueError(f"stop_gradient_after={stop_gradient_after} is outside 0.."
                       f"{cfg.num_hidden_layers} (the blocks of this BERT)")
    self.cfg = cfg
    self.remat = remat
    self.stop_gradient_after = stop_gradient_after
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.layers = nnx.List([Layer(cfg, dtype=dtype, impl=impl, rngs=rngs)
                            for _ in range(cfg.num_hidden_layers)])
    if pooler:
      self.pooler = layers.dense(cfg.hidden_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
    if mlm_head:
      self.mlm = MLMHead(cfg, dtype=dtype, rngs=rngs)

  @property
  def has_mlm_head(self) -> bool:
    return hasattr(self, "mlm")

  def __call__(self, ids_BxL: jax.Array, kv_len_B: jax.Array | None = None,
               token_type_BxL: jax.Array | None = None) -> dict[str, jax.Array]:
    """HF's `last_hidden_state` and `pooler_output` for right-padded ids.

    Args:
      ids_BxL: int ids, right padded; L <= max_position_embeddings.
      kv_len_B: int ids before padding per row (HF's attention_mask = position < kv_len),
        or None for no padding. Rows must keep at least one key.
      token_type_BxL: segment ids, or None for all zeros (HF's default).

    Returns:
      dict float32: `tokens` [B, L, D] (last hidden state), and `pooled` [B, D]
      (tanh(Dense(tokens[:, 0])), HF's pooler) when built with one.
    """
    L = ids_BxL.shape[1]
    if L > self.cfg.max_position_embeddings:
      raise ValueError(f"{L} tokens exceed max_position_embeddings "
                       f"{self.cfg.max_position_embeddings} of this BERT")
    if kv_len_B is not None:
      kv_len_B = kv_len_B.astype(jnp.int32)

    def apply(x, layer):
      return layer(x, kv_len_B)
    if self.remat:
      apply = nnx.remat(apply)
    x_BxLxD = self.embeddings(ids_BxL, token_type_BxL)
    for i, layer in enumerate(self.layers):
      x_BxLxD = apply(x_BxLxD, layer)
      if i + 1 == self.stop_gradient_after:
        x_BxLxD = jax.lax.stop_gradient(x_BxLxD)
    out = dict(tokens=x_BxLxD)
    if hasattr(self, "pooler"):
      out["pooled"] = jnp.tanh(self.pooler(x_BxLxD[:, 0]).astype(jnp.float32))
    return out

  def mlm_logits(self, h_BxKxD: jax.Array) -> jax.Array:
    """The masked-LM head on hidden features [B, K, D] -> float32 logits [B, K, vocab]."""
    if not self.has_mlm_head:
      raise ValueError("this BERT was built without its masked-LM head")
    return self.mlm(h_BxKxD, self.embeddings.word.embedding[...])
