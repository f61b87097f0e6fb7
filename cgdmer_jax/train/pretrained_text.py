"""Setting up a pretrained report tower for a run: the checkpoint folder into the config, the
dataset's tokenizer checked against it, and its weights into the initial parameters.

`models/bert_tower.py` owns the settings (`config.model.text`) and the tower; this module
reads the folder (`models/bert_checkpoint.py` for the weights, `data_pipelines.wordpiece`
for the vocabulary digest) before anything compiles.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from cgdmer_jax.models import bert
from cgdmer_jax.models import bert_checkpoint
from cgdmer_jax.models import bert_tower
from data_pipelines import wordpiece


def resolve(config: ml_collections.ConfigDict) -> None:
  """Fills `model.text`, `model.text_width` and `model.vocab_size` from `init_from` (in place;
  without it only the BERT's vocabulary follows `model.vocab_size`; no-op for the transformer).

  Raises:
    FileNotFoundError / ValueError: the folder's files (see `bert_checkpoint`), or
      `freeze_layers` outside 0..num_hidden_layers.
  """
  m = config.model
  if not bert_tower.is_bert(m):
    return
  t = m.text
  with config.unlocked():
    t.kind = "bert"
    if t.init_from:
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
  if not bert_tower.is_bert(m):
    return
  t = m.text
  have = build_info.get("tokenizer_name") or (
      f"SentencePiece ({build_info.get('vocab_size')} pieces)" if build_info.get("tokenizer")
      else "no tokenizer")
  if t.vocab_sha256:
    if build_info.get("vocab_sha256") != t.vocab_sha256:
      raise ValueError(
          f"the dataset at {data_dir} was built with tokenizer {have}, but the report tower "
          f"is the BERT of {t.init_from} (WordPiece vocab_sha256 {t.vocab_sha256[:12]}): "
          f"rebuild the data with --tokenizer=hf:{t.init_from}")
  with config.unlocked():
    if not t.init_from:
      t.bert = dict(t.bert, vocab_size=int(build_info["vocab_size"]))
  if int(t.bert["vocab_size"]) != int(build_info["vocab_size"]):
    raise ValueError(f"the dataset at {data_dir} has a vocabulary of {build_info['vocab_size']} "
                     f"({have}), the BERT report tower {t.bert['vocab_size']}")
  if m.max_report_len > int(t.bert["max_position_embeddings"]):
    raise ValueError(f"the dataset stores {m.max_report_len} report tokens, more than the "
                     f"BERT's max_position_embeddings {t.bert['max_position_embeddings']}")


def pretrained_params(config: ml_collections.ConfigDict) -> dict[tuple[str, ...], np.ndarray]:
  """init_from's weights at their CGDMER paths (the MLM head only where a text head exists)."""
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
    names = bert_tower.names_of(path)
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
