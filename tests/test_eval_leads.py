"""Reduced-lead evaluation: lead sets by name, and a lead subset hides exactly the other leads."""

import numpy as np
import pytest

from cgdmer_jax import inference
from cgdmer_jax.evaluators import leads
from cgdmer_jax.evaluators import records
from cgdmer_jax.evaluators import runner
from configs import pretrain
from data_pipelines import locate

ALL = leads.ALL


@pytest.mark.parametrize("spec, want", [
    ("I", ("I",)), ("ii, i", ("I", "II")), ("I,II,III", ("I", "II", "III")),
    ("limb", ALL[:6]), ("ALL", ALL), ("v1,AVF", ("aVF", "V1"))])
def test_lead_sets_parse_by_name_in_canonical_order(spec, want):
  assert leads.parse(spec) == want
  np.testing.assert_array_equal(leads.keep_mask(spec), [n in want for n in ALL])


@pytest.mark.parametrize("spec", ["", "I,X", "lead1", "limb,V1"])
def test_an_unknown_lead_set_is_refused(spec):
  with pytest.raises(ValueError, match="unknown lead set"):
    leads.parse(spec)


def test_tags_name_the_set():
  assert [leads.tag(s) for s in ("all", "I,II,III,aVR,aVL,aVF", "I,II")] == ["all", "limb",
                                                                             "I-II"]


def test_apply_clears_and_zeroes_exactly_the_other_leads():
  rng = np.random.default_rng(0)
  ecg = rng.normal(size=(3, 12, 50)).astype(np.float32)
  mask = np.ones((3, 12), bool)
  mask[1, 1] = False  # record 1 never recorded II
  keep = leads.keep_mask("I,II")
  out, out_mask = leads.apply(ecg, mask, keep)
  want = np.zeros((3, 12), bool)
  want[:, :2] = True
  want[1, 1] = False
  np.testing.assert_array_equal(out_mask, want)
  np.testing.assert_array_equal(out[:, :2][want[:, :2]], ecg[:, :2][want[:, :2]])
  assert not out[~want].any() and out.dtype == ecg.dtype
  assert mask.sum() == 35 and ecg[:, 5].any()  # the inputs are left as they were
  assert leads.missing_reason(mask[1], leads.keep_mask("II")) == "none of the leads II is " \
      "recorded"
  assert leads.missing_reason(mask[0], keep) is None


class _Recorder:
  """An encoder stand-in that records what it was given."""
  fs, seconds, batch_size, name = 100, 10.0, 4, "rec"

  def __init__(self):
    self.calls = []

  def signal_config(self, min_leads=1):
    return inference.Encoder.signal_config(self, min_leads)

  def embed_ecg(self, ecg, valid_len, lead_mask):
    self.calls.append((ecg.copy(), lead_mask.copy()))
    n = len(ecg)
    return {k: np.zeros((n, 2), np.float32) for k in records.OUTPUTS}


def test_feature_cache_hides_the_other_leads_and_leaves_out_records_without_the_set(
    embedded_data):
  locs = locate.records_in_folder(embedded_data / "ptbxl" / "records100" / "00000")[:3]
  enc = _Recorder()
  feats = records.FeatureCache(enc, progress=False, keep=leads.keep_mask("II,V1")).fetch(locs)
  assert all(isinstance(f, dict) for f in feats)
  ecg, mask = enc.calls[0]
  keep = leads.keep_mask("II,V1")
  assert mask[:, keep].all() and not mask[:, ~keep].any()
  assert not ecg[:, ~keep].any() and ecg[:, keep].any()
  # A record that has none of the set's leads: left out with the reason, not embedded.
  reader = records.FeatureCache(enc, progress=False, keep=keep).reader
  canon = reader.read(locs[0])
  canon.lead_mask[:] = False
  canon.lead_mask[0] = True
  cache = records.FeatureCache(enc, progress=False, keep=keep)
  cache.reader.read_many = lambda todo: [(loc, canon, None) for loc in todo]
  assert cache.fetch(locs[:1]) == ["none of the leads II,V1 is recorded"]


def test_the_model_sees_nothing_of_a_hidden_lead():
  """Embeddings on lead I alone do not change when every other lead's signal changes."""
  config = pretrain.get_config("size=tiny")
  enc = inference.random_init(config, None, batch_size=4)
  rng = np.random.default_rng(0)
  ecg = rng.normal(size=(4, 12, enc.num_samples)).astype(np.float32)
  other = ecg.copy()
  other[:, 1:] = rng.normal(size=other[:, 1:].shape) * 3
  keep = leads.keep_mask("I")
  mask = np.ones((4, 12), bool)
  valid = np.full(4, enc.num_samples)
  a = enc.embed_ecg(*_swap(leads.apply(ecg, mask, keep), valid))
  b = enc.embed_ecg(*_swap(leads.apply(other, mask, keep), valid))
  full_a = enc.embed_ecg(ecg, valid, mask)
  full_b = enc.embed_ecg(other, valid, mask)
  np.testing.assert_allclose(a["shared"], b["shared"], atol=1e-5)
  assert np.abs(full_a["shared"] - full_b["shared"]).max() > 1e-3  # leads matter when shown


def _swap(applied, valid):
  ecg, mask = applied
  return ecg, valid, mask


def test_protocol_reads_the_lead_set():
  assert runner.Protocol(leads=("v1", "i")).check().leads == ("I", "V1")
  with pytest.raises(ValueError, match="unknown lead set"):
    runner.Protocol(leads=("I", "Q")).check()
