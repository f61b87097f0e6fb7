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
