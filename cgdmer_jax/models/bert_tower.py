"""A pretrained BERT-family report tower: config resolution, the tower, loading and freezing.

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

`resolve(config)` fills these from the folder (and `model.text_width` from its hidden size)
before the model is built; the resolved config written to the workdir then rebuilds the same
model without the folder.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cgdmer_jax.models import bert, layers

KINDS = ("transformer", "bert")
# What `model.text` means in a config written before it existed (configs/common.text_config).
_LEGACY = ml_collections.FrozenConfigDict(dict(kind="transformer", init_from=None,
                                               freeze_layers=0, mlm_head=False))


def settings(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`model.text`, or the from-scratch transformer's settings for older configs."""
  t = model_config.get("text")
  return t if t is not None else _LEGACY


def is_bert(model_config: ml_collections.ConfigDict) -> bool:
  t = settings(model_config)
  if t.kind not in KINDS:
    raise ValueError(f"unknown model.text.kind {t.kind!r}; known: {KINDS}")
  return t.kind == "bert" or bool(t.get("init_from"))


def resolve(config: ml_collections.ConfigDict) -> None:
  """Fills `model.text`, `model.text_width` and `model.vocab_size` from `init_from` (in place;
  without it only the BERT's vocabulary follows `model.vocab_size`; no-op for the transformer).

  Raises:
    FileNotFoundError / ValueError: the folder's files (see `bert_checkpoint`), or
      `freeze_layers` outside 0..num_hidden_layers.
  """
  m = config.model
  if not is_bert(m):
    return
  t = m.text
  with config.unlocked():
    t.kind = "bert"
    if t.get("init_from"):
      from cgdmer_jax.models import bert_checkpoint  # pylint: disable=g-import-not-at-top
      from data_pipelines import wordpiece  # pylint: disable=g-import-not-at-top
      cfg = bert_checkpoint.read_config(t.init_from)
      _, mlm, _ = bert_checkpoint.check_weights(bert_checkpoint.read_weights(t.init_from), cfg,
                                                source=t.init_from)
      t.bert = cfg.to_dict()
      t.mlm_head = bool(mlm)
      t.vocab_sha256 = wordpiece.from_folder(t.init_from).vocab_sha256
      m.vocab_size = cfg.vocab_size  # the dataset's must equal it (check_dataset)
    else:
      t.bert = dict(t.bert, vocab_size=int(m.vocab_size))
    cfg = bert.BertConfig.from_dict(t.bert)
    m.text_width = cfg.hidden_size
  if not 0 <= int(t.freeze_layers) <= cfg.num_hidden_layers:
    raise ValueError(f"model.text.freeze_layers={t.freeze_layers} is outside 0.."
                     f"{cfg.num_hidden_layers} (the blocks of this BERT)")


def check_dataset(config: ml_collections.ConfigDict, build_info: dict, data_dir: str) -> None:
  """Refuses a dataset whose tokenizer is not the BERT tower's; sets the vocabulary size.

  Raises:
    ValueError: naming the dataset's tokenizer and the model's.
  """
  m = config.model
  if not is_bert(m):
    return
  t = m.text
  have = build_info.get("tokenizer_name") or (
      f"SentencePiece ({build_info.get('vocab_size')} pieces)" if build_info.get("tokenizer")
      else "no tokenizer")
  if t.get("vocab_sha256"):
    if build_info.get("vocab_sha256") != t.vocab_sha256:
      raise ValueError(
          f"the dataset at {data_dir} was built with tokenizer {have}, but the report tower "
          f"is the BERT of {t.init_from} (WordPiece vocab_sha256 {t.vocab_sha256[:12]}): "
          f"rebuild the data with --tokenizer=hf:{t.init_from}")
  with config.unlocked():
    if not t.get("init_from"):
      t.bert = dict(t.bert, vocab_size=int(build_info["vocab_size"]))
  if int(t.bert["vocab_size"]) != int(build_info["vocab_size"]):
    raise ValueError(f"the dataset at {data_dir} has a vocabulary of {build_info['vocab_size']} "
                     f"({have}), the BERT report tower {t.bert['vocab_size']}")
  if m.max_report_len > int(t.bert["max_position_embeddings"]):
    raise ValueError(f"the dataset stores {m.max_report_len} report tokens, more than the "
                     f"BERT's max_position_embeddings {t.bert['max_position_embeddings']}")


class BertTextEncoder(nnx.Module):
  """`text.TextEncoder`'s interface over a `bert.BertModel` (no pooler: reports are mean-pooled)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    t = settings(m)
    cfg = bert.BertConfig.from_dict(t.bert)
    if m.text_width != cfg.hidden_size:
      raise ValueError(f"model.text_width {m.text_width} != the BERT's hidden_size "
                       f"{cfg.hidden_size} (bert_tower.resolve sets it)")
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


def _names(path) -> tuple[str, ...]:
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
      lambda p, _: is_frozen(_names(p), model_config), params)


def pretrained_params(config: ml_collections.ConfigDict) -> dict[tuple[str, ...], np.ndarray]:
  """init_from's weights at their CGDMER paths (the MLM head only where a text head exists)."""
  from cgdmer_jax.models import bert_checkpoint  # pylint: disable=g-import-not-at-top
  t = config.model.text
  cfg = bert.BertConfig.from_dict(t.bert)
  weights, _, _ = bert_checkpoint.check_weights(bert_checkpoint.read_weights(t.init_from), cfg,
                                                source=t.init_from)
  out = {}
  for path, arr in bert_checkpoint.to_model_params(weights, cfg).items():
    names = tuple(map(str, path))
    if names[0] == "pooler":
      continue
    if names[0] == "mlm":
      if config.loss.text > 0 and t.mlm_head:
        out[("text_head",) + names] = arr
      continue
    out[("text", "bert") + names] = arr
  return out


def load_pretrained(params: Any, config: ml_collections.ConfigDict) -> Any:
  """`params` (global jax.Arrays) with init_from's weights in place, same shardings.

  Raises:
    ValueError: a checkpoint tensor the model has no parameter for, or of another shape.
  """
  flat = pretrained_params(config)
  used = set()

  def put(path, leaf):
    names = _names(path)
    if names not in flat:
      return leaf
    arr = flat[names]
    if tuple(arr.shape) != tuple(leaf.shape):
      raise ValueError(f"{'/'.join(names)}: model shape {tuple(leaf.shape)}, checkpoint "
                       f"{tuple(arr.shape)}")
    used.add(names)
    arr = arr.astype(leaf.dtype)
    # From a callback: every process fills only its own shards (multi-host safe).
    return jax.make_array_from_callback(arr.shape, leaf.sharding, lambda idx: arr[idx])

  out = jax.tree_util.tree_map_with_path(put, params)
  missing = sorted(set(flat) - used)
  if missing:
    raise ValueError(f"the model has no parameter {'/'.join(missing[0])} for init_from's "
                     "weights")
  return out
