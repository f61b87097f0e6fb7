"""Canonical signal: lead mapping, lead policy, NaN policy, resampling, crop/pad, int16 uV."""

import numpy as np
import pytest
import scipy.signal

from cgdmer_jax.data import features
from data_pipelines import signal
from data_pipelines.sources import Rejected

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("name,lead", [
    ("I", "I"), ("ii", "II"), ("III", "III"), ("AVR", "aVR"), ("aVL", "aVL"), ("avf", "aVF"),
    ("V1", "V1"), ("v6", "V6"), ("Lead II", "II"), ("ECG V2", "V2"), ("DII", "II"),
    ("MLII", None), ("MLI", None), ("MCL1", None), ("V", None), ("vx", None), ("ABP", None),
    ("PLETH", None), ("V7", None), ("", None)])
def test_lead_names(name, lead):
  assert signal.canonical_lead(name) == lead


def _raw(t=1000, fs=100.0, leads=features.LEADS):
  return RNG.normal(0, 0.5, (t, len(leads))), list(leads), fs


def test_leads_reordered_by_name_and_extras_dropped():
  x, _, fs = _raw()
  # MIMIC-IV-ECG order (aVF before aVL), upper-case names, plus a Frank lead and ABP.
  names = ["I", "II", "III", "AVR", "AVF", "AVL", "V1", "V2", "V3", "V4", "V5", "V6", "vx",
           "ABP"]
  perm = [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]
  raw = np.concatenate([x[:, perm], RNG.normal(size=(1000, 2))], axis=1)
  out = signal.canonicalize(raw, names, fs, signal.Config(fs=100))
  np.testing.assert_allclose(out.millivolts, x.T, atol=0.0005 + 1e-7)
  assert out.lead_mask.all() and out.valid_len == 1000


def test_missing_leads_rejected_by_default_and_carried_with_min_leads():
  x, names, fs = _raw()
  keep = [i for i, n in enumerate(names) if n not in ("V3", "aVL")]
  sub, sub_names = x[:, keep], [names[i] for i in keep]
  with pytest.raises(Rejected, match=r"missing leads: aVL, V3"):
    signal.canonicalize(sub, sub_names, fs, signal.Config(fs=100))
  out = signal.canonicalize(sub, sub_names, fs, signal.Config(fs=100, min_leads=10))
  assert out.lead_mask.tolist() == [n not in ("V3", "aVL") for n in features.LEADS]
  assert not out.ecg[features.LEADS.index("V3")].any()
  assert out.ecg[features.LEADS.index("V4")].any()


def test_mlii_is_not_lead_ii():
  x = RNG.normal(size=(1000, 2))
  with pytest.raises(Rejected, match="missing leads: I, II, III, aVR, aVL, aVF, V1, V2, V3, "
                     "V4, V6$"):
    signal.canonicalize(x, ["MLII", "V5"], 100.0, signal.Config(fs=100))
  out = signal.canonicalize(x, ["MLII", "V5"], 100.0, signal.Config(fs=100, min_leads=1))
  assert out.lead_mask.tolist() == [n == "V5" for n in features.LEADS]


def test_nan_filled_counted_and_rejected_above_threshold():
  x, names, fs = _raw()
  x[100:110, 0] = np.nan
  x[500, 3] = np.inf
  out = signal.canonicalize(x, names, fs, signal.Config(fs=100))
  assert out.nan_count == 11
  lead_i = out.millivolts[0]
  # Linear interpolation between the neighbours of the gap (quantised to 1 uV).
  expected = np.interp(np.arange(100, 110), [99, 110], [x[99, 0], x[110, 0]])
  np.testing.assert_allclose(lead_i[100:110], expected, atol=0.0006)
  bad = x.copy()
  bad[:200, :] = np.nan  # 20% of the samples, plus the Inf at [500, 3]
  with pytest.raises(Rejected, match="too many NaN"):
    signal.canonicalize(bad, names, fs, signal.Config(fs=100, max_nan_fraction=0.1))
  assert signal.canonicalize(bad, names, fs,
                             signal.Config(fs=100, max_nan_fraction=0.25)).nan_count == 2401


def test_all_nan_lead_counts_as_missing():
  x, names, fs = _raw()
  x[:, features.LEADS.index("V6")] = np.nan
  with pytest.raises(Rejected, match="missing leads: V6"):
    signal.canonicalize(x, names, fs, signal.Config(fs=100))
  out = signal.canonicalize(x, names, fs, signal.Config(fs=100, min_leads=11))
  assert not out.lead_mask[-1] and out.nan_count == 0


def test_clipping_counted():
  x, names, fs = _raw()
  x[10, 0], x[20, 1] = 40.0, -33.0
  out = signal.canonicalize(x, names, fs, signal.Config(fs=100))
  assert out.clipped == 2
  assert out.ecg[0, 10] == features.INT16_MAX and out.ecg[1, 20] == -features.INT16_MAX


def test_crop_and_pad():
  x, names, _ = _raw(t=3000, fs=500.0)
  out = signal.canonicalize(x, names, 500.0, signal.Config(fs=500, seconds=10))
  assert out.valid_len == 3000 and out.ecg.shape == (12, 5000)
  assert not out.ecg[:, 3000:].any()
  long, _, _ = _raw(t=7000, fs=500.0)
  out = signal.canonicalize(long, names, 500.0, signal.Config(fs=500, seconds=10))
  assert out.valid_len == 5000
  np.testing.assert_array_equal(out.ecg, np.rint(long[:5000].T * 1000).astype(np.int16))


@pytest.mark.parametrize("fs_in,fs_out", [(100, 500), (500, 100), (360, 500), (1000, 500),
                                          (257, 100)])
def test_resampling_is_resample_poly(fs_in, fs_out):
  x, names, _ = _raw(t=int(fs_in * 10))
  out = signal.canonicalize(x, names, float(fs_in), signal.Config(fs=fs_out))
  up, down = signal.resample_factors(fs_in, fs_out)
  assert up * fs_in == down * fs_out
  ref = scipy.signal.resample_poly(x, up, down, axis=0)[:fs_out * 10]
  np.testing.assert_array_equal(out.ecg, np.rint(ref.T * 1000).astype(np.int16))
  assert out.valid_len == fs_out * 10


def test_non_integer_rate_is_approximated():
  up, down = signal.resample_factors(62.4725 * 4, 500)
  assert down <= 100
  assert abs(up / down - 500 / (62.4725 * 4)) / (500 / (62.4725 * 4)) < 1e-3


def test_empty_signal_rejected():
  with pytest.raises(Rejected, match="empty signal"):
    signal.canonicalize(np.zeros((0, 12)), features.LEADS, 500.0, signal.Config())
