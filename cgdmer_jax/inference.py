"""Embedding ECGs and reports with a trained model: from a workdir, an export, or random init.

`Encoder` is what evaluation and the `embed` CLI use. It wraps two functions with static
batch shapes (inputs are padded to `batch_size` rows, so each compiles once):

  ecg_fn(ecg_BxCxT float32 mV, valid_len_B int32, lead_mask_BxC bool)
      -> {embedding, shared, specific, probe}
  text_fn(ids_BxL int32, len_B int32) -> {embedding, shared, specific}

Normalisation happens inside `ecg_fn` (as in pretraining), so callers pass millivolts. Records
are read by `data_pipelines.locate` (the converter's readers and canonicalisation) and
reports/prompts are cleaned and tokenized by the converter's functions: one code path.

The user-facing API (`cgdmer_jax.load` is `load` below):

  enc = cgdmer_jax.load("EXPORT")       # an export, its hub folder, or a training workdir
  enc.embed_ecg(x_NxCxT, fs=250, leads=["II", "V1", "aVL"], units="uV")  # raw: canonicalised
  enc.embed_ecg(ecg_Nx12xT_mV, valid_len_N, lead_mask_Nx12)             # canonical batches
  enc.embed_text(["sinus rhythm"]); enc.probe_features(x, fs=250)
  enc.zero_shot(x, {"AF": "atrial fibrillation", "NORM": ["sinus rhythm", "normal ecg"]},
                fs=250)                 # {class: cosine scores [N]}

Loaders:
  * `from_workdir`: the live model from a training workdir's latest (or given) checkpoint;
  * `from_export`: the `jax.export` StableHLO functions written by `cgdmer_jax.export` — no model
    code is used, only the serialized functions, `export_info.json` and the tokenizer;
  * `random_init`: the same architecture with freshly initialised weights (the baseline).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import ml_collections
from etils import epath

from cgdmer_jax import objective
from cgdmer_jax.data import features
from cgdmer_jax.encoder import Encoder
from cgdmer_jax.models import cgdmer
from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import workdir_config

ECG_EXPORT = "ecg_encoder.jax_exported"
TEXT_EXPORT = "text_encoder.jax_exported"
EXPORT_INFO = "export_info.json"
EXPORT_FORMAT_VERSION = 1
MODEL_CARD = "MODEL_CARD.md"
# ---------------------------------------------------------------------------------------------
# Loaders.



def empty_export_folder(folder: epath.Path, *, overwrite: bool, kind: str) -> None:
  """Makes `folder` an empty folder to write an export into; with `overwrite` it deletes a
  previous export there, and never a folder that holds no `EXPORT_INFO` (anything else).

  Raises:
    FileExistsError: the folder is not empty and `overwrite` is off, or it is not an export.
  """
  if folder.exists() and any(folder.iterdir()):
    if not overwrite:
      raise FileExistsError(f"{folder} is not empty; pass --overwrite to replace it")
    if not (folder / EXPORT_INFO).is_file():
      raise FileExistsError(f"--overwrite replaces {kind} only; {folder} holds no "
                            f"{EXPORT_INFO}, so nothing in it was deleted")
    folder.rmtree()
  folder.mkdir(parents=True, exist_ok=True)


def tokenizer_of(config, workdir: str | os.PathLike) -> str | None:
  """The run's tokenizer file (SentencePiece `tokenizer.model` or WordPiece `wordpiece.json`):
  in the workdir, else in the dataset folder; None if neither."""
  for folder in (epath.Path(workdir), epath.Path(str(config.data.dir or "."))):
    for name in features.TOKENIZER_FILES:
      if (folder / name).is_file():
        return str(folder / name)
  return None


def _live_encoder(config, params, graphdef, tokenizer_path, name, batch_size) -> Encoder:
  # Params are passed as an argument (not closed over): jit then sees plain arrays.
  ecg_fn = functools.partial(jax.jit(objective.encode_ecg_fn(graphdef, config)), params)
  text_fn = None
  if cgdmer.branches(config)["text"]:
    text_fn = functools.partial(jax.jit(objective.encode_text_fn(graphdef, config)), params)
  return Encoder(ecg_fn=ecg_fn, text_fn=text_fn, tokenizer_path=tokenizer_path,
                 fs=int(config.data.fs), seconds=float(config.data.seconds),
                 max_report_len=int(config.model.max_report_len), name=name,
                 batch_size=batch_size)


def checkpoint_target(workdir: epath.Path, step: int | str | None) -> epath.Path:
  """Where `step` (None/'latest', an int, or 'best' for best/) of a workdir lives."""
  if step is None or step == "latest":
    return workdir
  if step == "best":
    return workdir / "best"
  return workdir / "checkpoints" / str(int(step))


def from_workdir(workdir: str | os.PathLike, *, step: int | str | None = None,
                 batch_size: int = 64) -> Encoder:
  """The trained model of a pretraining workdir.

  Args:
    workdir: the training workdir.
    step: None or 'latest' (the latest checkpoint), a step number, or 'best' (the params
      kept by zero-shot model selection, `config.best`).
    batch_size: ECGs per encoder call.
  """
  workdir = epath.Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json)")
  config = workdir_config.read(config_path)
  graphdef, abstract = objective.abstract_init(config)
  target = checkpoint_target(workdir, step)
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                           abstract)
  params = checkpointing.restore_params(target, abstract, shardings)
  return _live_encoder(config, params, graphdef, tokenizer_of(config, workdir),
                       f"{workdir.name}", batch_size)


def random_init(config: ml_collections.ConfigDict, tokenizer_path: str | None, *,
                seed: int = 0, batch_size: int = 64) -> Encoder:
  """`config`'s architecture with random weights: the baseline a pretrained model must beat."""
  graphdef, params = objective.init(config, seed)
  return _live_encoder(config, params, graphdef, tokenizer_path, f"random_init(seed={seed})",
                       batch_size)


def from_export(export_dir: str | os.PathLike, *, batch_size: int = 64) -> Encoder:
  """The serialized encoders of `python -m cgdmer_jax.export` (no model code involved)."""
  export_dir = epath.Path(export_dir)
  info_path = export_dir / EXPORT_INFO
  if not info_path.is_file():
    raise FileNotFoundError(f"{export_dir} is not an export (no {EXPORT_INFO})")
  info = json.loads(info_path.read_text())
  ecg = jax.export.deserialize((export_dir / ECG_EXPORT).read_bytes())
  text = None
  if (export_dir / TEXT_EXPORT).is_file():
    text = jax.export.deserialize((export_dir / TEXT_EXPORT).read_bytes())
  tok = export_dir / (info.get("tokenizer") or features.TOKENIZER_FILE)
  return Encoder(
      ecg_fn=jax.jit(ecg.call), text_fn=None if text is None else jax.jit(text.call),
      tokenizer_path=str(tok) if tok.is_file() else None, fs=int(info["fs"]),
      seconds=float(info["seconds"]), max_report_len=int(info["max_report_len"]),
      name=export_dir.name, batch_size=batch_size)


def load(path: str | os.PathLike, *, step: int | str | None = None,
         batch_size: int = 64) -> Encoder:
  """An export folder or a training workdir (at `step`), whichever `path` is."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist")
  if not path.is_dir():
    raise FileNotFoundError(f"{path} is a file: pass an export folder or a training workdir")
  if not (path / EXPORT_INFO).is_file() and not (path / workdir_config.CONFIG_FILE).is_file():
    inside = sorted(p.name for p in path.iterdir())
    hint = ""
    if any(n.isdigit() for n in inside):
      hint = " (a checkpoints folder: pass the workdir above it)"
    elif "params" in inside:
      hint = " (a checkpoint step: pass the training workdir or an export)"
    raise FileNotFoundError(
        f"{path} is not an export (no {EXPORT_INFO}) and not a training workdir (no "
        f"{workdir_config.CONFIG_FILE}){hint}; it holds: {', '.join(inside[:6]) or 'nothing'}")
  if (path / EXPORT_INFO).is_file():
    if step not in (None, "latest"):
      raise ValueError(f"{path} is an export (one fixed checkpoint): --step={step} applies to "
                       "training workdirs only")
    return from_export(path, batch_size=batch_size)
  return from_workdir(path, step=step, batch_size=batch_size)
