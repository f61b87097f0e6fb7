"""Hand-crafted ECG features: the floor a pretrained encoder has to clear (`--baselines`).

`bandpower_encoder` wraps log band powers in an `inference.Encoder` (no report tower), so the
evaluators score it exactly as they score a model: same records, same label subsets, same
probes. Per lead, Welch's power spectral density over the record's valid samples
(`scipy.signal.welch`, 2 s Hann segments, half overlap) is summed over 15 bands of 3 Hz from
0 to 45 Hz (QRS, P/T waves and their harmonics; mains hum at 50/60 Hz excluded) and log10'd:
12 x 15 = 180 numbers. A lead that was not recorded gives zeros (the probe standardises the
columns, so a constant column carries nothing).

`band_power_zscore` computes the same numbers after the model's own amplitude normalisation
(`models/normalize.py`, 'zscore': each lead of each record to mean 0, std 1): the floor of an
encoder that sees the waveform's shape but not its voltage. The gap between the two baselines
is what the normalisation takes away (docs/RECIPE.md: most of it is HYP).
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sp_signal

from cgdmer_jax import inference
from cgdmer_jax.models import normalize as normalize_lib

BAND_EDGES_HZ = np.arange(0.0, 45.0 + 1e-9, 3.0)   # 16 edges: 15 bands
_FLOOR = 1e-12                                       # log of an empty band


def band_powers(ecg_BxCxT: np.ndarray, valid_len_B: np.ndarray, lead_mask_BxC: np.ndarray,
                fs: int) -> np.ndarray:
  """Log10 band powers of each lead.

  Args:
    ecg_BxCxT: millivolts.
    valid_len_B: samples before zero padding (rows of length 0 give zeros).
    lead_mask_BxC: recorded leads.
    fs: sampling rate (Hz).

  Returns:
    float32 [B, C * 15], lead-major.
  """
  B, C, _ = ecg_BxCxT.shape
  bands = len(BAND_EDGES_HZ) - 1
  out = np.zeros((B, C, bands), np.float32)
  for b in range(B):
    n = int(valid_len_B[b])
    if n < 8:
      continue
    x = np.asarray(ecg_BxCxT[b, :, :n], np.float64)
    freqs, psd_CxF = sp_signal.welch(x, fs=fs, nperseg=min(n, 2 * fs), axis=-1)
    which = np.digitize(freqs, BAND_EDGES_HZ) - 1           # band of each frequency bin
    for k in range(bands):
      sel = which == k
      if sel.any():
        out[b, :, k] = np.log10(psd_CxF[:, sel].sum(-1) + _FLOOR)
    out[b, ~np.asarray(lead_mask_BxC[b], bool)] = 0.0
  return out.reshape(B, C * bands)


def bandpower_encoder(fs: int, seconds: float, *, batch_size: int = 64,
                      normalize: str = "none"):
  """An `inference.Encoder` whose features (every kind) are the 180 band powers.

  Args:
    fs: sampling rate the records are canonicalised to.
    seconds: record duration kept.
    batch_size: records per call.
    normalize: amplitude normalisation before the spectrum, a `models.normalize.METHODS`
      name: 'none' (millivolts, the `band_power` baseline) or 'zscore' (`band_power_zscore`).

  Returns:
    The encoder (`text_fn` None: zero-shot is skipped for it).
  """
  if normalize not in normalize_lib.METHODS:
    raise ValueError(f"unknown normalize {normalize!r}; known: {normalize_lib.METHODS}")

  def ecg_fn(ecg_BxCxT, valid_len_B, lead_mask_BxC):
    ecg = np.asarray(ecg_BxCxT)
    if normalize != "none":
      ecg = np.asarray(normalize_lib.normalize_ecg(ecg, np.asarray(valid_len_B),
                                                   np.asarray(lead_mask_BxC), normalize))
    feats = band_powers(ecg, np.asarray(valid_len_B), np.asarray(lead_mask_BxC), fs)
    return {"embedding": feats, "shared": feats, "specific": feats}

  name = "band_power" if normalize == "none" else f"band_power_{normalize}"
  return inference.Encoder(ecg_fn=ecg_fn, text_fn=None, tokenizer_path=None, fs=fs,
                           seconds=seconds, max_report_len=0, name=name,
                           batch_size=batch_size)
