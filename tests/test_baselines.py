"""The band-power baseline on real PTB-XL records: the features, and scored like a model."""

import numpy as np
import pytest
from scipy import signal as sp_signal

from cgdmer_jax.evaluators import baselines
from cgdmer_jax.evaluators import runner
from data_pipelines import locate
from data_pipelines import signal
from tests import conftest


def _records(n=4):
  reader = locate.CanonicalReader(signal.Config(fs=100, seconds=10.0, min_leads=1))
  root = conftest.EMBEDDED / "ptbxl" / "records100"
  heads = sorted(root.rglob("*_lr.hea"))[:n]
  locs = [locate.locate_file(h) for h in heads]
  canon = [c for _, c, _ in reader.read_many(locs)]
  assert all(c is not None for c in canon)
  return (np.stack([c.millivolts for c in canon]), np.asarray([c.valid_len for c in canon]),
          np.stack([c.lead_mask for c in canon]))


def test_band_powers_of_real_records():
  ecg, valid, leads = _records()
  feats = baselines.band_powers(ecg, valid, leads, fs=100)
  assert feats.shape == (4, 12 * 15) and np.all(np.isfinite(feats))
  # Band 0 (0-3 Hz) of lead I of record 0, by hand from scipy's Welch estimate.
  freqs, psd = sp_signal.welch(ecg[0, 0, :valid[0]].astype(np.float64), fs=100, nperseg=200)
  assert feats[0, 0] == pytest.approx(np.log10(psd[freqs < 3.0].sum()), rel=1e-5)
  # Power scales with the square of the amplitude: x10 adds 2 to every log10 band power.
  np.testing.assert_allclose(baselines.band_powers(10 * ecg, valid, leads, 100), feats + 2,
                             atol=1e-4)
  # A lead that was not recorded carries zeros, the others are unchanged.
  leads2 = leads.copy()
  leads2[1, 3] = False
  f2 = baselines.band_powers(ecg, valid, leads2, 100).reshape(4, 12, 15)
  assert np.all(f2[1, 3] == 0) and np.array_equal(f2[0], feats.reshape(4, 12, 15)[0])


def test_band_power_is_scored_like_a_model(embedded_data, tmp_path):
  enc = baselines.bandpower_encoder(100, 10.0)
  proto = runner.Protocol(split="val", probes=("logreg",), features=("shared",), resamples=50)
  res = runner.evaluate_encoder(enc, ["ptbxl_super"], [1.0], data_root=embedded_data,
                                protocol=proto, progress=False)
  task = res["tasks"]["ptbxl_super"]
  assert task["zero_shot"]["auc"] is None and "no report tower" in task["zero_shot"]["reason"]
  cell = task["linear_probe"]["logreg"]["shared"]["100"]
  # 191 real training ECGs, 5 classes: band powers carry signal, far from chance.
  assert cell["classes_scored"] == 5 and cell["train_rows"] == 191
  assert 0.6 < cell["auc"] < 1.0
  assert cell["interval"][0] <= cell["auc"] <= cell["interval"][1]


def test_band_power_zscore_sees_no_amplitude():
  ecg, valid, leads = _records()
  mv = baselines.bandpower_encoder(100, 10.0)
  zs = runner.BASELINES["band_power_zscore"](100, 10.0)
  assert (mv.name, zs.name) == ("band_power", "band_power_zscore")
  f_mv = mv.ecg_fn(ecg, valid, leads)["shared"]
  f_zs = zs.ecg_fn(ecg, valid, leads)["shared"]
  assert f_zs.shape == f_mv.shape and np.all(np.isfinite(f_zs))
  # Scaling a record by 10 moves the millivolt band powers by 2 and the z-scored ones not at all.
  f_zs10 = zs.ecg_fn(10 * ecg, valid, leads)["shared"]
  np.testing.assert_allclose(f_zs10, f_zs, atol=1e-4)
  assert np.abs(f_zs - f_mv).max() > 0.5
  # Each z-scored lead has unit variance: its power below 45 Hz (PSD x 0.5 Hz bins) is at most 1.
  power = 0.5 * (10.0 ** f_zs.reshape(4, 12, 15)).sum(-1)
  assert np.all(power[leads] < 1.05) and np.all(power[leads] > 0.5)
  with pytest.raises(ValueError, match="unknown normalize"):
    baselines.bandpower_encoder(100, 10.0, normalize="minmax")
