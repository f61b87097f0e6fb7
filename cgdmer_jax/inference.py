"""Embedding ECGs and reports with a trained model: from a workdir, an export, or random init.

`Encoder` is what evaluation and the `embed` CLI use. It wraps two functions with static
batch shapes (inputs are padded to `batch_size` rows, so each compiles once):

  ecg_fn(ecg_BxCxT float32 mV, valid_len_B int32, lead_mask_BxC bool)
      -> {embedding, shared, specific, probe}
  text_fn(ids_BxL int32, len_B int32) -> {embedding, shared, specific}

Normalisation happens inside `ecg_fn` (as in pretraining), so callers pass millivolts. Records
are read by `data_pipelines.locate` (the converter's readers and canonicalisation) and
reports/prompts are cleaned and tokenized by the converter's functions: one code path.

Loaders:
  * `from_workdir`: the live model from a training workdir's latest (or given) checkpoint;
  * `from_export`: the `jax.export` StableHLO functions written by `cgdmer_jax.export` — no model
    code is used, only the serialized functions, `export_info.json` and the tokenizer;
  * `random_init`: the same architecture with freshly initialised weights (the baseline).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable
from typing import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from cgdmer_jax import objective
from cgdmer_jax import progress as progress_lib
from cgdmer_jax.data import features
from cgdmer_jax.models import cgdmer
from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import workdir_config
from data_pipelines import reports
from data_pipelines import signal
from data_pipelines import tokenizer

ECG_EXPORT = "ecg_encoder.jax_exported"
TEXT_EXPORT = "text_encoder.jax_exported"
EXPORT_INFO = "export_info.json"
EXPORT_FORMAT_VERSION = 1


@dataclasses.dataclass
class Encoder:
  """Batched ECG and report encoders with the preprocessing facts they need."""
  ecg_fn: Callable
  text_fn: Callable | None
  tokenizer_path: str | None
  fs: int
  seconds: float
  max_report_len: int
  name: str
  batch_size: int = 64

  @property
  def num_samples(self) -> int:
    return int(round(self.fs * self.seconds))

  def signal_config(self, min_leads: int = 1):
    """The canonicalisation this model was trained with (missing leads carried as masked)."""
    return signal.Config(fs=self.fs, seconds=self.seconds, min_leads=min_leads)

  def _batched(self, fn, arrays: Sequence[np.ndarray], desc: str, progress: bool):
    n = len(arrays[0])
    outs: dict[str, list[np.ndarray]] = {}
    steps = range(0, n, self.batch_size)
    for start in progress_lib.bar(steps, desc=desc, unit="batch",
                                  disable=not progress or n <= self.batch_size):
      chunk = [a[start:start + self.batch_size] for a in arrays]
      rows = len(chunk[0])
      # Pad to the static batch size so every call reuses one compiled program.
      chunk = [np.concatenate([c, np.zeros((self.batch_size - rows,) + c.shape[1:], c.dtype)])
               for c in chunk]
      for k, v in fn(*chunk).items():
        outs.setdefault(k, []).append(np.asarray(v)[:rows])
    return {k: np.concatenate(v) for k, v in outs.items()}

  def embed_ecg(self, ecg_NxCxT: np.ndarray, valid_len_N: np.ndarray | None = None,
                lead_mask_NxC: np.ndarray | None = None, *, progress: bool = False
                ) -> dict[str, np.ndarray]:
    """Embeds canonical ECGs (millivolts, 12 leads, `num_samples` long)."""
    ecg = np.asarray(ecg_NxCxT, np.float32)
    if ecg.ndim != 3 or ecg.shape[1:] != (features.NUM_LEADS, self.num_samples):
      raise ValueError(f"ECG batch must be [N, 12, {self.num_samples}] (fs={self.fs}, "
                       f"seconds={self.seconds:g}), got {ecg.shape}")
    n = len(ecg)
    valid = (np.full(n, self.num_samples, np.int32) if valid_len_N is None
             else np.asarray(valid_len_N, np.int32))
    leads = (np.ones((n, features.NUM_LEADS), bool) if lead_mask_NxC is None
             else np.asarray(lead_mask_NxC, bool))
    if n == 0:
      return {}
    return self._batched(self.ecg_fn, [ecg, valid, leads], "embed ECG", progress)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cleans and tokenizes texts exactly as the converter stores reports."""
    if self.tokenizer_path is None:
      raise ValueError(f"{self.name}: no tokenizer, cannot embed text")
    tok = tokenizer.load(self.tokenizer_path)  # SentencePiece or WordPiece, by file
    ids, lens = zip(*(tok.encode(reports.clean_report(t), self.max_report_len) for t in texts))
    return np.stack(ids).astype(np.int32), np.asarray(lens, np.int32)

  def embed_text(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Embeds report strings (e.g. zero-shot class prompts)."""
    if self.text_fn is None:
      raise ValueError(f"{self.name} has no report tower (variant without text)")
    ids, lens = self.tokenize(texts)
    if np.any(lens == 0):
      raise ValueError("cannot embed an empty text")
    return self.embed_ids(ids, lens)

  def embed_ids(self, ids_NxL: np.ndarray, len_N: np.ndarray) -> dict[str, np.ndarray]:
    """Embeds already tokenized reports ([N, max_report_len] ids and their lengths)."""
    if self.text_fn is None:
      raise ValueError(f"{self.name} has no report tower (variant without text)")
    return self._batched(self.text_fn, [np.asarray(ids_NxL, np.int32),
                                        np.asarray(len_N, np.int32)], "embed text", False)


# ---------------------------------------------------------------------------------------------
# Loaders.


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
