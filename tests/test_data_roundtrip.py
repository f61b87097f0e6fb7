"""Round trip: what the TFRecords hold == the raw file read independently + the documented steps.

The expected values are re-derived here without `data_pipelines.signal`: `wfdb.rdsamp` (or
`rdrecord(smooth_frames=False)` for multi-frequency records, `scipy.io.loadmat` for original
CPSC files) -> leads picked by name -> first ceil(10 s * fs_in) samples -> NaN interpolation
-> `scipy.signal.resample_poly` -> crop/pad, compared in microvolts within the 0.5 uV
rounding of the int16 storage.
"""

import fractions
import math

import numpy as np
import pytest
import scipy.io
import scipy.signal
import tensorflow_datasets as tfds
import wfdb

from cgdmer_jax.data import features
from data_pipelines import signal
from data_pipelines import write

_NAMES = {n.lower(): n for n in features.LEADS}


def _stored(out):
  """{record_id: example} over every split of a converted dataset, read through TFDS."""
  builder = tfds.builder_from_directory(str(out))
  stored = {}
  for split, info in builder.info.splits.items():
    if not info.num_examples:  # TFDS refuses to read an empty split
      continue
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      stored[ex["record_id"].decode()] = ex
  return stored


def _raw(root, source, record):
  """(signal [T, C] mV, names, fs) read straight from the files."""
  if source == "cpsc_mat":
    data = scipy.io.loadmat(root / f"{record}.mat")["ECG"][0, 0]["data"]
    return data.T.astype(np.float64), list(features.LEADS), 500.0
  rec = wfdb.rdrecord(str(root / record), smooth_frames=False)
  if max(rec.samps_per_frame) > 1:  # multi-frequency: ECG channels at their own rate
    keep = [i for i, n in enumerate(rec.sig_name) if n.lower() in _NAMES]
    top = max(rec.samps_per_frame[i] for i in keep)
    keep = [i for i in keep if rec.samps_per_frame[i] == top]
    sig = np.stack([rec.e_p_signal[i] for i in keep], axis=1)
    return sig, [rec.sig_name[i] for i in keep], rec.fs * top
  sig, fields = wfdb.rdsamp(str(root / record))
  return sig, list(fields["sig_name"]), float(fields["fs"])


def _expected(sig, names, fs_in, fs_out, seconds=10.0):
  t_out = int(fs_out * seconds)
  n_in = math.ceil(round(seconds * fs_in, 6))
  cols = {}
  for c, name in enumerate(names):
    lead = _NAMES.get(name.lower())
    if lead is not None and lead not in cols:
      cols[lead] = c
  x = sig[:n_in, [cols[k] for k in cols]].astype(np.float64)
  for j in range(x.shape[1]):
    bad = ~np.isfinite(x[:, j])
    if bad.any():
      x[bad, j] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), x[~bad, j])
  if float(fs_in).is_integer():
    ratio = fractions.Fraction(int(fs_out), int(fs_in))
  else:
    ratio = fractions.Fraction(fs_out / fs_in).limit_denominator(100)
  if ratio != 1:
    x = scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
  valid = min(t_out, x.shape[0])
  out = np.zeros((features.NUM_LEADS, t_out))
  mask = np.zeros(features.NUM_LEADS, bool)
  for j, lead in enumerate(cols):
    out[features.LEADS.index(lead), :valid] = x[:valid, j] * 1000.0
    mask[features.LEADS.index(lead)] = True
  return out, mask, valid


def _check(root, out, source, fs, limit=None):
  stored = _stored(out)
  assert stored, "nothing was written"
  for record in sorted(stored)[:limit]:
    ex = stored[record]
    sig, names, fs_in = _raw(root, source, record)
    want, mask, valid = _expected(sig, names, fs_in, fs)
    assert ex["ecg"].dtype == np.int16 and ex["ecg"].shape == want.shape
    np.testing.assert_array_equal(ex["lead_mask"].astype(bool), mask, err_msg=record)
    assert ex["valid_len"] == valid, record
    err = np.abs(ex["ecg"].astype(np.float64) - want).max()
    assert err <= 0.5 + 1e-6, f"{record}: max error {err} uV"
  return len(stored)


def _build(tmp_path, source, root, fs, **kw):
  out = tmp_path / f"{source}_{fs}"
  cfg = write.BuildConfig(source=source, input=str(root), output=str(out),
                          signal=signal.Config(fs=fs, min_leads=kw.pop("min_leads", 12),
                                               max_nan_fraction=kw.pop("max_nan", 0.1)),
                          vocab_size=300, workers=1, progress=False, **kw)
  write.build(cfg)
  return out


@pytest.mark.parametrize("source,folder,fs,limit", [
    ("ptbxl", "ptbxl", 100, 8),            # format 16, native rate
    ("ptbxl", "ptbxl", 500, 8),            # upsampled x5
    ("cinc", "cpsc2018/wfdb", 100, None),  # WFDB .mat, 6-15 s, down x5, crop
    ("cpsc_mat", "cpsc2018/original_mat", 100, None),
    ("ecg_arrhythmia", "csn", 100, None),
    ("cinc", "cinc_other", 250, None),     # Georgia, down x2
])
def test_round_trip_12_lead_layouts(embedded_data, tmp_path, source, folder, fs, limit):
  root = embedded_data / folder
  out = _build(tmp_path, source, root, fs)
  assert _check(root, out, source, fs, limit) >= 2


def test_round_trip_wfdb_samples_partial_leads(embedded_data, tmp_path):
  """Format 80, 212 multi-segment, FLAC 516 multi-frequency with NaN, WFDB .mat, 200 Hz."""
  root = embedded_data / "wfdb_samples"
  out = _build(tmp_path, "wfdb_dir", root, 100, min_leads=1, max_nan=0.6)
  n = _check(root, out, "wfdb_dir", 100)
  stored = _stored(out)
  assert n == 6 and "flac_mixedsignals/mixedsignals" in stored
  assert "mimic2_multiseg_041s/041s" in stored and "mimic3_3000003_0003/3000003_0003" in stored
  # format 80 record: 1028 samples at 125 Hz (8.2 s) -> 823 valid samples at 100 Hz.
  assert stored["mimic3_3000003_0003/3000003_0003"]["valid_len"] == 823


def test_round_trip_ptbdb_frank_leads_on_shared(shared_data, tmp_path):
  """1000 Hz, lower-case lead names and 3 Frank leads (dropped), 38.4 s cropped to 10 s."""
  root = shared_data / "wfdb_samples"
  out = _build(tmp_path, "wfdb_dir", root, 500)
  stored = _stored(out)
  assert list(stored) == ["ptbdb_s0010_re/s0010_re"]
  _check(root, out, "wfdb_dir", 500)
