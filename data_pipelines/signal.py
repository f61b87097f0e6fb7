"""The canonical signal: every stored ECG is 12 leads x `fs * seconds` int16 microvolts.

`canonicalize` turns a raw signal (float [T, C] mV, channel names, fs) into the stored form,
in this order (the round-trip tests re-derive the stored values from `wfdb.rdsamp` with the
same steps):

1. **Leads by name.** Channel names are matched to `features.LEADS` case-insensitively after
   removing spaces, '-' and '_' and an optional 'lead'/'ecg' prefix, so `AVL`, `aVL`, `avl`,
   `Lead II`, `ECG V1` all map; `DI/DII/DIII` (Latin-American/European notation) map to
   I/II/III. **Modified leads are not standard leads and are never mapped**: `MLII`, `MLI`,
   `MLIII` (Holter/monitoring limb leads with torso electrodes, e.g. MIT-BIH), `MCL1`...
   (modified chest leads), and a bare `V` (a monitoring chest lead of unknown position).
   Other channels (Frank X/Y/Z, ABP, PLETH...) are dropped. If a name occurs twice the first
   channel is used.
2. **Window.** The first `ceil(seconds * fs_in)` input samples are kept (the rest of a long
   record is never resampled).
3. **NaN/Inf** (WFDB's invalid-sample code, gaps) in the window are counted. A lead with no
   finite sample counts as missing. If more than `max_nan_fraction` of the samples of the
   present leads are not finite the record is rejected (`too many NaN`); otherwise they are
   filled by linear interpolation between the nearest finite samples of the same lead
   (constant at the edges) so resampling does not smear a step.
4. **Lead count.** Fewer than `min_leads` present standard leads: rejected with
   `missing leads: <names>`. Otherwise missing leads are stored as zeros with `lead_mask` 0.
5. **Resampling** with `scipy.signal.resample_poly(x, up, down, axis=0)` (default Kaiser
   window), up/down the reduced fraction `fs_out / fs_in` (exact for integer rates; a
   non-integer input rate such as 62.4725 x 4 Hz is approximated by a fraction with
   denominator <= 100, a rate error below 0.01%). Equal rates skip this step.
6. **Crop/pad** to `num_samples = round(fs * seconds)`; `valid_len` = samples before padding.
7. **int16 microvolts**: round(mV * 1000), values beyond +-32767 uV clipped and counted.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import math
import re
from collections.abc import Sequence

import numpy as np
import scipy.signal

from cgdmer_jax.data import features
from data_pipelines.errors import Rejected

_STANDARD = {name.lower(): name for name in features.LEADS}
_STANDARD.update({"di": "I", "dii": "II", "diii": "III"})
_PREFIX = re.compile(r"^(lead|ecg)")
_STRIP = re.compile(r"[\s\-_]+")


def canonical_lead(name: str) -> str | None:
  """The `features.LEADS` name of a channel name, or None when it is not a standard lead.

  Args:
    name: a channel name as written in a file ('AVL', 'v1', 'Lead II', 'MLII'...).

  Returns:
    'I', 'II', ..., 'V6', or None (MLII and other modified leads give None).
  """
  key = _STRIP.sub("", str(name).lower())
  if key in _STANDARD:
    return _STANDARD[key]
  key = _PREFIX.sub("", key)
  return _STANDARD.get(key) if key else None


@dataclasses.dataclass(frozen=True)
class Config:
  """How records are canonicalised (the converter's --fs, --seconds, --min_leads flags)."""
  fs: int = 500
  seconds: float = 10.0
  min_leads: int = 12
  max_nan_fraction: float = 0.1

  @property
  def num_samples(self) -> int:
    return int(round(self.fs * self.seconds))


@dataclasses.dataclass(frozen=True)
class Canonical:
  """A canonical ECG.

  Attributes:
    ecg: int16 [12, num_samples], microvolts, lead order `features.LEADS`.
    lead_mask: bool [12], True where the lead was recorded.
    valid_len: samples before zero padding.
    nan_count: non-finite input samples filled by interpolation.
    clipped: samples clipped to the int16 range.
  """
  ecg: np.ndarray
  lead_mask: np.ndarray
  valid_len: int
  nan_count: int
  clipped: int

  @property
  def millivolts(self) -> np.ndarray:
    """float32 [12, T]: exactly what the reader returns for this record."""
    return self.ecg.astype(np.float32) / np.float32(features.UNITS_PER_MV)


def resample_factors(fs_in: float, fs_out: float) -> tuple[int, int]:
  """(up, down) of the polyphase resampler from `fs_in` to `fs_out`, reduced.

  Args:
    fs_in: input rate (Hz).
    fs_out: output rate (Hz).

  Returns:
    Coprime (up, down); (1, 1) for equal rates.
  """
  if float(fs_in).is_integer() and float(fs_out).is_integer():
    ratio = fractions.Fraction(int(fs_out), int(fs_in))
  else:
    ratio = fractions.Fraction(fs_out / fs_in).limit_denominator(100)
  return ratio.numerator, ratio.denominator


@functools.cache
def _lowpass(up: int, down: int) -> np.ndarray:
  """The anti-aliasing FIR filter `resample_poly` designs by default for (up, down).

  Designing it (firwin) costs about as much as filtering a 10 s record, so it is made once
  per rate pair and passed as `window=`; scipy then uses it unchanged (it copies it and
  scales it by `up` exactly as it does its own design), so the output is identical.
  """
  max_rate = max(up, down)
  return scipy.signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
  """`scipy.signal.resample_poly` along axis 0 from `fs_in` to `fs_out` (float64).

  Args:
    x: float [T, C].
    fs_in: input rate.
    fs_out: output rate.

  Returns:
    float64 [ceil(T * up / down), C]; `x` itself when the rates are equal.
  """
  up, down = resample_factors(fs_in, fs_out)
  if (up, down) == (1, 1):
    return x
  return scipy.signal.resample_poly(np.asarray(x, dtype=np.float64), up, down, axis=0,
                                    window=_lowpass(up, down))


def window_length(fs_in: float, seconds: float) -> int:
  """Input samples kept before resampling: ceil(seconds * fs_in), robust to float noise."""
  return int(math.ceil(round(seconds * fs_in, 6)))


def _fill_nonfinite(x: np.ndarray) -> None:
  """Linear interpolation over non-finite samples, per column, in place."""
  for j in range(x.shape[1]):
    col = x[:, j]
    bad = ~np.isfinite(col)
    if bad.any():
      good = np.flatnonzero(~bad)
      col[bad] = np.interp(np.flatnonzero(bad), good, col[good])


def canonicalize(signal: np.ndarray, leads: Sequence[str], fs: float,
                 config: Config) -> Canonical:
  """The canonical stored form of one raw signal (steps in the module docstring).

  Args:
    signal: float [T, C] in millivolts.
    leads: C channel names.
    fs: input sampling rate (Hz).
    config: target rate, duration, minimum leads and NaN tolerance.

  Returns:
    The `Canonical` ECG.

  Raises:
    Rejected: empty signal, too many NaN, or fewer than `config.min_leads` leads.
  """
  if not fs or fs <= 0:
    raise Rejected(f"invalid sampling rate {fs!r}")
  columns: dict[int, int] = {}
  for c, name in enumerate(leads):
    lead = canonical_lead(name)
    if lead is not None:
      columns.setdefault(features.LEADS.index(lead), c)
  n_in = min(signal.shape[0], window_length(fs, config.seconds))
  if n_in == 0:
    raise Rejected("empty signal")
  order = sorted(columns)
  x = np.array(signal[:n_in, [columns[k] for k in order]], dtype=np.float64)
  finite = np.isfinite(x)
  present = finite.any(axis=0)
  nan_count = int((~finite[:, present]).sum())
  if present.any() and nan_count > config.max_nan_fraction * n_in * int(present.sum()):
    frac = nan_count / (n_in * int(present.sum()))
    raise Rejected(f"too many NaN: {frac:.1%} of samples > {config.max_nan_fraction:.1%}")
  have = [k for k, p in zip(order, present) if p]
  if len(have) < config.min_leads:
    missing = [features.LEADS[k] for k in range(features.NUM_LEADS) if k not in have]
    raise Rejected(f"missing leads: {', '.join(missing)}")
  x = x[:, present]
  if nan_count:
    _fill_nonfinite(x)
  x = resample(x, fs, config.fs)
  t = config.num_samples
  valid = min(t, x.shape[0])
  uv = np.rint(x[:valid] * features.UNITS_PER_MV)
  over = np.abs(uv) > features.INT16_MAX
  clipped = int(over.sum())
  if clipped:
    np.clip(uv, -features.INT16_MAX, features.INT16_MAX, out=uv)
  ecg = np.zeros((features.NUM_LEADS, t), dtype=np.int16)
  ecg[have, :valid] = uv.T.astype(np.int16)
  mask = np.zeros(features.NUM_LEADS, dtype=bool)
  mask[have] = True
  return Canonical(ecg=ecg, lead_mask=mask, valid_len=valid, nan_count=nan_count,
                   clipped=clipped)
