"""`Encoder`: embedding ECGs and reports with a model's two functions (see `inference`).

It wraps two functions with static batch shapes (inputs are padded to `batch_size` rows, so
each compiles once):

  ecg_fn(ecg_BxCxT float32 mV, valid_len_B int32, lead_mask_BxC bool)
      -> {embedding, shared, specific, probe}
  text_fn(ids_BxL int32, len_B int32) -> {embedding, shared, specific}

Raw arrays at any rate, lead order and unit are canonicalised with the converter's own code
(`data_pipelines.signal`); reports and prompts are cleaned and tokenized by the converter's
functions. `inference` builds Encoders from a workdir, an export or random init.
"""

from __future__ import annotations

import dataclasses
from typing import Callable
from typing import Sequence

import numpy as np

from cgdmer_jax import progress as progress_lib
from cgdmer_jax.data import features
from cgdmer_jax.evaluators import zero_shot as zero_shot_lib
from data_pipelines import reports
from data_pipelines import signal
from data_pipelines import tokenizer
from data_pipelines.errors import Rejected

# Raw input units -> the factor to millivolts.
_UNITS = {"mV": 1.0, "uV": 1e-3, "µV": 1e-3, "V": 1e3}


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

  def embed_ecg(self, ecg: np.ndarray, valid_len_N: np.ndarray | None = None,
                lead_mask_NxC: np.ndarray | None = None, *, fs: float | None = None,
                leads: Sequence[str] | None = None, units: str = "mV",
                progress: bool = False) -> dict[str, np.ndarray]:
    """Embeds ECGs: canonical batches as they are, raw recordings after canonicalisation.

    Two ways to call it:

    * canonical input, `embed_ecg(ecg_Nx12xT, valid_len_N, lead_mask_NxC)`: millivolts, the
      12 leads in `features.LEADS` order, `num_samples` long (what the readers return);
    * raw input, `embed_ecg(x, fs=..., leads=..., units=...)`: `x` is [N, C, T] or [C, T] at
      any sampling rate, with C channels named by `leads` in any order (default: the 12
      standard leads in order). Each record goes through the converter's
      `data_pipelines.signal.canonicalize` (leads matched by name, window of `seconds`,
      resampling to `fs`, int16 microvolt quantisation, crop/zero-pad); missing leads are
      masked. Passing `fs`, `leads`, a unit other than mV, or a [C, T] array selects it.

    Example (a 12-lead ECG recorded at 250 Hz in microvolts, leads in another order):

      >>> import numpy as np, cgdmer_jax
      >>> enc = cgdmer_jax.load("EXPORT")  # doctest: +SKIP
      >>> x = np.random.randn(2, 3, 2500) * 300  # doctest: +SKIP
      >>> enc.embed_ecg(x, fs=250, leads=["V1", "II", "aVL"], units="uV")["embedding"].shape
      ... # doctest: +SKIP
      (2, 256)

    Args:
      ecg: the signals (see above).
      valid_len_N: canonical input only: samples before zero padding (default: all).
      lead_mask_NxC: canonical input only: recorded leads (default: all 12).
      fs: raw input: sampling rate in Hz (default: the model's rate).
      leads: raw input: the C channel names ('I', 'II', 'aVR', 'V1', 'Lead II'...).
      units: raw input: 'mV', 'uV' (or 'µV') or 'V'.
      progress: show a progress bar over batches.

    Returns:
      {'embedding', 'shared', 'specific', 'probe'}: float arrays with N rows.

    Raises:
      ValueError: wrong shape, unknown lead names or units, or a record that cannot be
        canonicalised (too short, only NaN, ...).
    """
    x = np.asarray(ecg)
    raw = fs is not None or leads is not None or units != "mV" or x.ndim == 2
    if raw:
      if valid_len_N is not None or lead_mask_NxC is not None:
        raise ValueError("valid_len and lead_mask are derived from raw input: pass them only "
                         "with canonical [N, 12, T] millivolt batches (no fs/leads/units)")
      x, valid, mask = self.canonicalize(x, fs=self.fs if fs is None else fs, leads=leads,
                                         units=units)
    else:
      x = np.asarray(x, np.float32)
      if x.ndim != 3 or x.shape[1:] != (features.NUM_LEADS, self.num_samples):
        raise ValueError(
            f"ECG batch must be [N, 12, {self.num_samples}] millivolts in the lead order "
            f"{', '.join(features.LEADS)} (fs={self.fs}, seconds={self.seconds:g}), got "
            f"{x.shape}; for another rate, length or lead order pass fs=..., leads=...")
      n = len(x)
      valid = (np.full(n, self.num_samples, np.int32) if valid_len_N is None
               else np.asarray(valid_len_N, np.int32))
      mask = (np.ones((n, features.NUM_LEADS), bool) if lead_mask_NxC is None
              else np.asarray(lead_mask_NxC, bool))
      if valid.shape != (n,) or mask.shape != (n, features.NUM_LEADS):
        raise ValueError(f"valid_len must be [{n}] and lead_mask [{n}, 12], got "
                         f"{valid.shape} and {mask.shape}")
    if len(x) == 0:
      return {}
    return self._batched(self.ecg_fn, [x, valid, mask], "embed ECG", progress)

  def canonicalize(self, x: np.ndarray, *, fs: float, leads: Sequence[str] | None = None,
                   units: str = "mV") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw [N, C, T] or [C, T] signals -> the model's (ecg mV [N,12,T], valid_len, lead_mask).

    Uses the converter's `data_pipelines.signal.canonicalize` record by record, so the
    result equals what the converter would have stored for the same recording.
    """
    x = np.asarray(x)
    if x.ndim == 2:
      x = x[None]
    if x.ndim != 3:
      raise ValueError(f"raw ECG must be [N, leads, T] or [leads, T], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
      raise ValueError(f"raw ECG must be numeric, got dtype {x.dtype}")
    if leads is None:
      if x.shape[1] != features.NUM_LEADS:
        raise ValueError(f"{x.shape[1]} channels but no lead names: pass leads=[...] (the "
                         f"default is the 12 leads {', '.join(features.LEADS)})")
      leads = features.LEADS
    if isinstance(leads, str):
      raise ValueError("leads must be a list of channel names, not one string")
    leads = list(leads)
    if len(leads) != x.shape[1]:
      raise ValueError(f"{len(leads)} lead names for {x.shape[1]} channels (shape {x.shape}: "
                       "[N, leads, T])")
    names = [signal.canonical_lead(name) for name in leads]
    unknown = [name for name, c in zip(leads, names) if c is None]
    if unknown:
      raise ValueError(f"unknown lead names {unknown}: expected standard leads "
                       f"{', '.join(features.LEADS)} (case, spaces and a 'lead' prefix are "
                       "ignored; modified leads such as MLII are not standard leads)")
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
      raise ValueError(f"leads given twice: {twice} (from {leads})")
    scale = _UNITS.get(units)
    if scale is None:
      raise ValueError(f"unknown units {units!r}: one of {', '.join(_UNITS)}")
    if not fs or fs <= 0:
      raise ValueError(f"fs must be a positive sampling rate in Hz, got {fs!r}")
    config = self.signal_config()
    ecg, valid, mask = [], [], []
    for i, rec in enumerate(x):
      try:
        c = signal.canonicalize(np.asarray(rec, np.float64).T * scale, leads, fs, config)
      except Rejected as e:
        raise ValueError(f"record {i}: {e}") from e
      ecg.append(c.millivolts)
      valid.append(c.valid_len)
      mask.append(c.lead_mask)
    if not ecg:
      return (np.zeros((0, features.NUM_LEADS, self.num_samples), np.float32),
              np.zeros(0, np.int32), np.zeros((0, features.NUM_LEADS), bool))
    return np.stack(ecg), np.asarray(valid, np.int32), np.stack(mask)

  def probe_features(self, ecg: np.ndarray, *args, feature: str = "probe",
                     **kwargs) -> np.ndarray:
    """Features for a linear probe, as the benchmark extracts them.

    Args:
      ecg: as `embed_ecg` (canonical or raw; further arguments are passed on).
      feature: 'probe' (the encoder's own probe output, `model.probe_features`: `shared` for
        models trained since 2026-12-04, `concat` before), 'concat' (shared and specific side
        by side), 'shared', 'specific' or 'embedding'.

    Returns:
      float32 [N, D].
    """
    if feature not in ("concat", "shared", "specific", "embedding", "probe"):
      raise ValueError(f"unknown feature {feature!r}: concat, shared, specific, embedding "
                       "or probe")
    out = self.embed_ecg(ecg, *args, **kwargs)
    if not out:
      return np.zeros((0, 0), np.float32)
    if feature == "concat":
      return np.concatenate([out["shared"], out["specific"]], axis=-1).astype(np.float32)
    return np.asarray(out[feature], np.float32)

  def zero_shot(self, ecg: np.ndarray, class_prompts: dict[str, str | Sequence[str]],
                *args, **kwargs) -> dict[str, np.ndarray]:
    """Zero-shot scores: cosine of each ECG's embedding with each class's prompt(s).

    A class with several prompts is scored against the mean of their L2-normalised
    embeddings (prompt ensembling).

    Example:

      >>> enc.zero_shot(x, {"AF": "atrial fibrillation", "NORM": ["sinus rhythm",
      ...                   "normal ecg"]}, fs=250, leads=["V1", "II", "aVL"])
      ... # doctest: +SKIP
      {'AF': array([0.12, 0.08]), 'NORM': array([0.31, 0.29])}

    Args:
      ecg: as `embed_ecg` (canonical or raw; further arguments are passed on).
      class_prompts: {class name: prompt or list of prompts}.

    Returns:
      {class name: float32 [N] scores in [-1, 1]}, in the order of `class_prompts`.
    """
    if not isinstance(class_prompts, dict) or not class_prompts:
      raise ValueError("class_prompts must be a non-empty {class: prompt or [prompts]} dict")
    texts, owner = [], []
    for c, p in class_prompts.items():
      ps = [p] if isinstance(p, str) else list(p)
      if not ps or not all(isinstance(t, str) and t.strip() for t in ps):
        raise ValueError(f"class {c!r}: prompts must be non-empty strings, got {p!r}")
      texts += ps
      owner += [c] * len(ps)
    t = self.embed_text(texts)["embedding"]
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    owner_arr = np.asarray(owner, dtype=object)
    classes = np.stack([t[owner_arr == c].mean(0) for c in class_prompts])
    e = self.embed_ecg(ecg, *args, **kwargs)
    if not e:
      return {c: np.zeros(0, np.float32) for c in class_prompts}
    s = zero_shot_lib.scores(e["embedding"], classes).astype(np.float32)
    return {c: s[:, i] for i, c in enumerate(class_prompts)}

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cleans and tokenizes texts exactly as the converter stores reports."""
    if self.tokenizer_path is None:
      raise ValueError(f"{self.name}: no tokenizer, cannot embed text")
    tok = tokenizer.load(self.tokenizer_path)  # SentencePiece or WordPiece, by file
    ids, lens = zip(*(tok.encode(reports.clean_report(t), self.max_report_len) for t in texts))
    return np.stack(ids).astype(np.int32), np.asarray(lens, np.int32)

  def embed_text(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
    """Embeds report strings (e.g. zero-shot class prompts), cleaned and tokenized as the
    pretraining reports were.

    Example:

      >>> enc.embed_text(["sinus rhythm", "atrial fibrillation"])["embedding"].shape
      ... # doctest: +SKIP
      (2, 256)

    Returns:
      {'embedding', 'shared', 'specific'}: float arrays with one row per text.
    """
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
      raise ValueError("embed_text takes a list of strings")
    if not texts:
      return {}
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


