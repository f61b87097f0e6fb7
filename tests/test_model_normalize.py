"""`models.normalize.normalize_ecg`, the model's first op on ECGs."""

import numpy as np
import pytest

from cgdmer_jax.models import normalize


def test_zscore_over_valid_samples_padding_and_missing_leads_zero():
  rng = np.random.default_rng(0)
  ecg = (3.0 + 2.0 * rng.normal(size=(2, 3, 100))).astype(np.float32)
  valid_len = np.array([100, 60], np.int32)
  lead_mask = np.array([[1, 1, 1], [1, 0, 1]], bool)
  ecg[1, :, 60:] = 0.0
  x = np.asarray(normalize.normalize_ecg(ecg, valid_len, lead_mask, "zscore"))
  for b, c in [(0, 0), (0, 2), (1, 0), (1, 2)]:
    v = x[b, c, :valid_len[b]]
    np.testing.assert_allclose([v.mean(), v.std()], [0.0, 1.0], atol=1e-5)
  assert (x[1, :, 60:] == 0).all() and (x[1, 1] == 0).all()


def test_flat_lead_and_empty_record_are_finite_zero():
  ecg = np.ones((2, 2, 50), np.float32)
  x = np.asarray(normalize.normalize_ecg(ecg, np.array([50, 0]), np.ones((2, 2), bool),
                                         "zscore"))
  assert np.isfinite(x).all() and (x == 0).all()


def test_none_and_unknown():
  ecg = np.arange(24, dtype=np.float32).reshape(1, 2, 12)
  x = normalize.normalize_ecg(ecg, np.array([10]), np.array([[1, 1]], bool), "none")
  np.testing.assert_array_equal(np.asarray(x)[..., :10], ecg[..., :10])
  assert (np.asarray(x)[..., 10:] == 0).all()
  with pytest.raises(ValueError, match="unknown"):
    normalize.normalize_ecg(ecg, np.array([10]), np.array([[1, 1]], bool), "minmax")
