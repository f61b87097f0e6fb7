"""A pretrained BERT-family report tower: its settings, the tower module, and what is frozen.

`config.model.text` selects the report backbone:
  kind           'transformer' (`text.TextEncoder`, trained from scratch) or 'bert'
                 (`models/bert.py`); `init_from` set implies 'bert'.
  init_from      a local Hugging Face checkpoint folder (config.json + model.safetensors +
                 tokenizer); its architecture replaces `text.bert` and its weights replace the
                 initial parameters of a run started from scratch.
  freeze_layers  K > 0: the embeddings and the first K blocks stay fixed (the optimizer
                 gives them no update and keeps no state, `optim.py`; gradients stop at block
                 K's output). MERL / MELP freeze the first 6 of MedCPT's 12: 6.
  bert           the architecture (`bert.BertConfig.to_dict()`); BERT-base by default.
  mlm_head       the checkpoint's masked-LM head is the text head's output layer (set from
                 the folder: True when it has `cls.predictions.*`).
  vocab_sha256   digest of init_from's WordPiece vocabulary: a dataset built with another
                 tokenizer is refused before anything compiles (`check_dataset`).

`cgdmer_jax.train.pretrained_text.resolve(config)` fills these from the folder (and
`model.text_width` from its hidden size) before the model is built; the resolved config
written to the workdir then rebuilds the same model without the folder. Reading the folder
and loading its weights into a run (`pretrained_text`) sit above this module: model code
reads no files.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cgdmer_jax.models import bert
from cgdmer_jax.models import layers

KINDS = ("transformer", "bert")

def settings(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`model.text` (configs/common.text_config; older runs' through train/workdir_config)."""
  return model_config.text


def is_bert(model_config: ml_collections.ConfigDict) -> bool:
  t = settings(model_config)
  if t.kind not in KINDS:
    raise ValueError(f"unknown model.text.kind {t.kind!r}; known: {KINDS}")
  return t.kind == "bert" or bool(t.init_from)


class BertTextEncoder(nnx.Module):
  """`text.TextEncoder`'s interface over a `bert.BertModel` (no pooler: reports are mean-pooled)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    t = settings(m)
    cfg = bert.BertConfig.from_dict(t.bert)
    if m.text_width != cfg.hidden_size:
      raise ValueError(f"model.text_width {m.text_width} != the BERT's hidden_size "
                       f"{cfg.hidden_size} (pretrained_text.resolve sets it)")
    if m.max_report_len > cfg.max_position_embeddings:
      raise ValueError(f"model.max_report_len {m.max_report_len} exceeds the BERT's "
                       f"max_position_embeddings {cfg.max_position_embeddings}")
    dtype = layers.compute_dtype(m.dtype)
    self.max_len = m.max_report_len
    self.bert = bert.BertModel(cfg, mlm_head=False, pooler=False, dtype=dtype,
                               impl=layers.attention_impl(m.attention, dtype), remat=m.remat,
                               stop_gradient_after=int(t.freeze_layers), rngs=rngs)

  def token_table(self) -> jax.Array:
    return self.bert.embeddings.word.embedding[...]

  def __call__(self, ids_BxL: jax.Array, len_B: jax.Array) -> dict[str, jax.Array]:
    """As `text.TextEncoder.__call__`: `tokens` [B, L, D], `valid` [B, L], `kv_len` [B]."""
    L = ids_BxL.shape[1]
    if L != self.max_len:
      raise ValueError(f"report length {L} != model.max_report_len {self.max_len}")
    len_B = jnp.clip(len_B.astype(jnp.int32), 0, L)
    kv_len_B = jnp.maximum(len_B, 1)
    tokens_BxLxD = self.bert(ids_BxL, kv_len_B)["tokens"]
    valid_BxL = jnp.arange(L)[None, :] < len_B[:, None]
    return dict(tokens=tokens_BxLxD, valid=valid_BxL, kv_len=kv_len_B)


# ---------------------------------------------------------------------------------------------
# Parameters of the whole model (CGDMER paths).


def names_of(path) -> tuple[str, ...]:
  out = []
  for entry in path:
    out.append(str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))))
  while out and out[-1] == "value":
    out.pop()
  return tuple(out)


def is_frozen(names: tuple[str, ...], model_config: ml_collections.ConfigDict) -> bool:
  """Whether the parameter at `names` (CGDMER path) is one `freeze_layers` keeps fixed."""
  if not is_bert(model_config):
    return False
  k = int(settings(model_config).freeze_layers)
  if k == 0 or names[:2] != ("text", "bert") or len(names) < 3:
    return False
  return names[2] == "embeddings" or (names[2] == "layers" and int(names[3]) < k)


def frozen_mask(params: Any, model_config: ml_collections.ConfigDict) -> Any:
  """Pytree of bools over `params`: True where the parameter is frozen."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: is_frozen(names_of(p), model_config), params)
