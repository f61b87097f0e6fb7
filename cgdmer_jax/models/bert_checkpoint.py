"""Loading a local Hugging Face BERT checkpoint folder into `models.bert.BertModel`.

A folder as `huggingface-cli download` / `save_pretrained` leaves it: `config.json`, the
weights as `model.safetensors` (or shards listed in `model.safetensors.index.json`), and the
tokenizer (`tokenizer.json` or `vocab.txt`, read by `data_pipelines.wordpiece`). Weights are
read with `safetensors.numpy`: a safetensors file is a JSON header plus raw little-endian
arrays, so nothing in a downloaded file is executed. A folder with only PyTorch pickles
(`pytorch_model.bin`) is refused with how to convert it; this module never unpickles.

Names: `BertModel` checkpoints store `embeddings.*`, `encoder.layer.N.*`, `pooler.*`;
`BertForMaskedLM` / `BertForPreTraining` prefix them with `bert.` and add `cls.predictions.*`
(the masked-LM head, kept when present). Old TF-converted checkpoints name LayerNorm
parameters `gamma` / `beta`. Every expected name and shape is derived from `config.json`
and checked before anything is assigned; the first missing, unexpected or mis-shaped tensor
is named in the error. The masked-LM decoder is tied to the word embeddings (HF's default);
an untied copy that differs is refused.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from cgdmer_jax.models import bert

# safetensors is imported inside `read_weights`, where weights are read: the step benchmark and
# the GPU check import this module (through the trainer) on a machine without safetensors.

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
                "flax_model.msgpack")

# Tensors a checkpoint may carry that this port does not use: buffers, the next-sentence
# head, task heads of fine-tuned models, and the decoder copies tied to other tensors.
IGNORED_PREFIXES = ("cls.seq_relationship.", "classifier.", "qa_outputs.")
IGNORED_NAMES = ("embeddings.position_ids", "cls.predictions.decoder.bias")
TIED_DECODER = "cls.predictions.decoder.weight"
MLM_PREFIX = "cls.predictions."
POOLER_NAMES = ("pooler.dense.weight", "pooler.dense.bias")

Path = tuple[Any, ...]


def _convert_hint(folder: pathlib.Path) -> str:
  return (f"Convert it once, where you trust the file, to {WEIGHTS_FILE}: e.g.\n"
          f"  python -c \"from transformers import AutoModel; "
          f"AutoModel.from_pretrained('{folder}').save_pretrained('{folder}', "
          f"safe_serialization=True)\"\n"
          "(use AutoModelForMaskedLM to keep the masked-LM head), or download the "
          f"repository's {WEIGHTS_FILE} where the hub has one.")


def weight_files(folder: str | os.PathLike) -> list[pathlib.Path]:
  """The safetensors files of a checkpoint folder.

  Args:
    folder: the local checkpoint folder.

  Returns:
    `[model.safetensors]`, or the shards named by `model.safetensors.index.json`.

  Raises:
    FileNotFoundError: no folder, no config.json, or no safetensors weights (a PyTorch
      `.bin` alone is refused with how to convert it).
    ValueError: an index naming a file outside the folder.
  """
  d = pathlib.Path(folder)
  if not d.is_dir():
    raise FileNotFoundError(f"checkpoint folder {d} does not exist")
  if not (d / CONFIG_FILE).is_file():
    raise FileNotFoundError(f"{d} has no {CONFIG_FILE}: not a Hugging Face checkpoint folder")
  if (d / WEIGHTS_FILE).is_file():
    return [d / WEIGHTS_FILE]
  if (d / WEIGHTS_INDEX_FILE).is_file():
    index = json.loads((d / WEIGHTS_INDEX_FILE).read_text())
    names = sorted(set(index.get("weight_map", {}).values()))
    if not names:
      raise ValueError(f"{d / WEIGHTS_INDEX_FILE} lists no weight files")
    for n in names:
      # Shard names come from a downloaded file: never follow one out of the folder.
      if pathlib.PurePath(n).name != n or not n.endswith(".safetensors"):
        raise ValueError(f"{d / WEIGHTS_INDEX_FILE} names {n!r}, not a .safetensors file "
                         "inside the folder")
    return [d / n for n in names]
  pickles = [n for n in PICKLE_FILES if (d / n).exists()]
  if pickles:
    raise FileNotFoundError(
        f"{d} has {pickles[0]} but no {WEIGHTS_FILE}. PyTorch .bin files are pickles, which "
        "can run code when loaded; this project only reads safetensors. "
        + _convert_hint(d))
  raise FileNotFoundError(f"{d} has no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE})")


def read_config(folder: str | os.PathLike) -> bert.BertConfig:
  """The `BertConfig` of a checkpoint folder's `config.json` (see `BertConfig.from_hf`)."""
  path = pathlib.Path(folder) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{pathlib.Path(folder)} has no {CONFIG_FILE}")
  return bert.BertConfig.from_hf(json.loads(path.read_text()), source=str(path))


def read_weights(folder: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of the folder's safetensors files, by its checkpoint name (numpy)."""
  from safetensors.numpy import load_file
  out: dict[str, np.ndarray] = {}
  for f in weight_files(folder):
    for name, arr in load_file(str(f)).items():
      if name in out:
        raise ValueError(f"tensor {name!r} appears in two weight files of {folder}")
      out[name] = arr
  return out


def _canonical(name: str) -> str:
  """`BertModel`'s name of a checkpoint tensor: no `bert.` prefix, LayerNorm weight/bias."""
  if name.startswith("bert."):
    name = name[len("bert."):]
  if ".LayerNorm." in name:
    name = name.replace(".LayerNorm.gamma", ".LayerNorm.weight")
    name = name.replace(".LayerNorm.beta", ".LayerNorm.bias")
  return name


def expected_shapes(cfg: bert.BertConfig, *, mlm_head: bool, pooler: bool = True
                    ) -> dict[str, tuple[int, ...]]:
  """Checkpoint names (canonical) and shapes that `cfg` implies, in checkpoint order."""
  D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  out = {"embeddings.word_embeddings.weight": (V, D),
         "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, D),
         "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, D),
         "embeddings.LayerNorm.weight": (D,), "embeddings.LayerNorm.bias": (D,)}
  for i in range(cfg.num_hidden_layers):
    p = f"encoder.layer.{i}."
    for n in ("attention.self.query", "attention.self.key", "attention.self.value",
              "attention.output.dense"):
      out[p + n + ".weight"] = (D, D)
      out[p + n + ".bias"] = (D,)
    out[p + "attention.output.LayerNorm.weight"] = (D,)
    out[p + "attention.output.LayerNorm.bias"] = (D,)
    out[p + "intermediate.dense.weight"] = (F, D)
    out[p + "intermediate.dense.bias"] = (F,)
    out[p + "output.dense.weight"] = (D, F)
    out[p + "output.dense.bias"] = (D,)
    out[p + "output.LayerNorm.weight"] = (D,)
    out[p + "output.LayerNorm.bias"] = (D,)
  if pooler:
    out["pooler.dense.weight"] = (D, D)
    out["pooler.dense.bias"] = (D,)
  if mlm_head:
    out["cls.predictions.transform.dense.weight"] = (D, D)
    out["cls.predictions.transform.dense.bias"] = (D,)
    out["cls.predictions.transform.LayerNorm.weight"] = (D,)
    out["cls.predictions.transform.LayerNorm.bias"] = (D,)
    out["cls.predictions.bias"] = (V,)
  return out


def check_weights(raw: dict[str, np.ndarray], cfg: bert.BertConfig, *, source: str = ""
                  ) -> tuple[dict[str, np.ndarray], bool, bool]:
  """Canonical names, and every tensor checked against what `cfg` implies.

  Args:
    raw: tensors by checkpoint name (`read_weights`).
    cfg: the folder's config.
    source: the folder, for error messages.

  Returns:
    (tensors by canonical name, has_mlm_head, has_pooler).

  Raises:
    ValueError: naming the first missing, unexpected or mis-shaped tensor (with its shape in
      the checkpoint and the shape config.json implies), or an untied MLM decoder.
  """
  where = f" in {source}" if source else ""
  weights: dict[str, np.ndarray] = {}
  for name, arr in raw.items():
    c = _canonical(name)
    if c in weights:
      raise ValueError(f"checkpoint{where} has {c!r} twice (as {name!r})")
    weights[c] = arr
  mlm = any(n.startswith(MLM_PREFIX + "transform.") for n in weights)
  pooler = any(n in weights for n in POOLER_NAMES)
  want = expected_shapes(cfg, mlm_head=mlm, pooler=pooler)
  for name, shape in want.items():
    if name not in weights:
      raise ValueError(f"checkpoint{where} has no tensor {name!r} (expected shape {shape} "
                       "from config.json)")
    got = tuple(weights[name].shape)
    if got != shape:
      raise ValueError(f"checkpoint{where}: tensor {name!r} has shape {got}, config.json "
                       f"implies {shape}: the weights and config.json do not match")
  for name in sorted(weights):
    if name in want or name in IGNORED_NAMES or name.startswith(IGNORED_PREFIXES):
      continue
    if name == TIED_DECODER and mlm:
      if not np.array_equal(weights[name], weights["embeddings.word_embeddings.weight"]):
        raise ValueError(f"checkpoint{where}: {TIED_DECODER} differs from the word "
                         "embeddings; only a tied masked-LM decoder is supported")
      continue
    raise ValueError(f"checkpoint{where} has tensor {name!r} (shape "
                     f"{tuple(weights[name].shape)}) that a BERT of this config.json does "
                     "not have")
  return {n: weights[n] for n in want}, mlm, pooler


def _f32(a: np.ndarray) -> np.ndarray:
  return np.asarray(a, dtype=np.float32)


def to_model_params(weights: dict[str, np.ndarray], cfg: bert.BertConfig) -> dict[Path, np.ndarray]:
  """Checked canonical tensors -> `BertModel` parameter paths (float32 arrays).

  Linear weights are transposed (torch stores [out, in]); a layer's query, key and value
  become the fused `attn.qkv` kernel [D, 3D] in that order, the column layout
  `layers.Attention` splits into (3, heads, head size).
  """
  w = {k: _f32(v) for k, v in weights.items()}
  out: dict[Path, np.ndarray] = {}

  def linear(path: Path, name: str):
    out[path + ("kernel",)] = w[name + ".weight"].T
    out[path + ("bias",)] = w[name + ".bias"]

  def norm(path: Path, name: str):
    out[path + ("scale",)] = w[name + ".weight"]
    out[path + ("bias",)] = w[name + ".bias"]

  e = "embeddings."
  out[("embeddings", "word", "embedding")] = w[e + "word_embeddings.weight"]
  out[("embeddings", "position", "embedding")] = w[e + "position_embeddings.weight"]
  out[("embeddings", "token_type", "embedding")] = w[e + "token_type_embeddings.weight"]
  norm(("embeddings", "norm"), e + "LayerNorm")
  for i in range(cfg.num_hidden_layers):
    p, q = ("layers", i), f"encoder.layer.{i}."
    s = q + "attention.self."
    out[p + ("attn", "qkv", "kernel")] = np.concatenate(
        [w[s + n + ".weight"].T for n in ("query", "key", "value")], axis=1)
    out[p + ("attn", "qkv", "bias")] = np.concatenate(
        [w[s + n + ".bias"] for n in ("query", "key", "value")])
    linear(p + ("attn", "out"), q + "attention.output.dense")
    norm(p + ("norm1",), q + "attention.output.LayerNorm")
    linear(p + ("fc1",), q + "intermediate.dense")
    linear(p + ("fc2",), q + "output.dense")
    norm(p + ("norm2",), q + "output.LayerNorm")
  if "pooler.dense.weight" in w:
    linear(("pooler",), "pooler.dense")
  if MLM_PREFIX + "bias" in w:
    linear(("mlm", "transform"), MLM_PREFIX + "transform.dense")
    norm(("mlm", "norm"), MLM_PREFIX + "transform.LayerNorm")
    out[("mlm", "bias")] = w[MLM_PREFIX + "bias"]
  return out


def assign(module: nnx.Module, params: dict[Path, np.ndarray], *, prefix: Path = ()) -> int:
  """Writes `params` (paths relative to the BertModel at `prefix` of `module`) in place.

  Args:
    module: a model holding a `BertModel` at `prefix` (or the BertModel itself).
    params: from `to_model_params`.
    prefix: path of the BertModel inside `module`.

  Returns:
    How many parameters were written.

  Raises:
    ValueError: a path the module lacks or a shape it does not have.
  """
  flat = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
  for path, value in params.items():
    full = tuple(prefix) + tuple(path)
    if full not in flat:
      raise ValueError(f"the model has no parameter {'/'.join(map(str, full))}")
    var = flat[full]
    if tuple(var.get_value().shape) != value.shape:
      raise ValueError(f"parameter {'/'.join(map(str, full))} has shape "
                       f"{tuple(var.get_value().shape)}, the checkpoint gives {value.shape}")
    var.set_value(np.asarray(value, np.float32))
  nnx.update(module, nnx.from_flat_state(flat))
  return len(params)


def load(folder: str | os.PathLike, *, dtype=None, impl: str | None = None,
         remat: bool = False, seed: int = 0) -> tuple[bert.BertModel, dict[str, Any]]:
  """A `BertModel` with a checkpoint folder's weights.

  Args:
    folder: the local checkpoint folder.
    dtype: compute dtype (default float32).
    impl: attention implementation (`layers.attention_impl`), None = XLA's default.
    remat: rematerialise each block.
    seed: init of parameters the checkpoint lacks (only a missing pooler).

  Returns:
    (model, info): info has `config` (BertConfig), `mlm_head` and `pooler` (bools: present
    in the checkpoint).
  """
  cfg = read_config(folder)
  weights, mlm, pooler = check_weights(read_weights(folder), cfg, source=str(folder))
  if not pooler:
    logging.warning("%s has no pooler weights: the pooler stays randomly initialised", folder)
  model = bert.BertModel(cfg, mlm_head=mlm, dtype=dtype or jnp.float32, impl=impl,
                         remat=remat, rngs=nnx.Rngs(seed))
  assign(model, to_model_params(weights, cfg))
  return model, dict(config=cfg, mlm_head=mlm, pooler=pooler)
