"""ECG spatial-temporal masks and BERT-style report masks: counts, structure, randomness."""

import jax
import numpy as np
import pytest

from cgdmer_jax import masking
from cgdmer_jax.data import features
from configs import pretrain

B = 16


@pytest.fixture(scope="module")
def config():
  return pretrain.get_config("size=tiny")


def _grid(mask_BxN, config):
  return np.asarray(mask_BxN).reshape(mask_BxN.shape[0], config.model.num_leads, -1)


def test_counts_tiny_default(config):
  c = masking.ecg_mask_counts(config)
  # 100 Hz x 10 s, 50-sample patches: 12 x 20 tokens; 3 leads and 5 times hidden
  # (3*20 + 5*12 - 3*5 = 105 tokens), then half of the 9 x 15 = 135 left (round(67.5) = 68).
  assert c == masking.EcgMaskCounts(240, 67, 173, 3, 5, 68)


def test_ecg_mask_exact_counts_and_partition(config):
  c = masking.ecg_mask_counts(config)
  m = masking.sample_ecg_mask(jax.random.key(0), B, config)
  keep, masked, mask = (np.asarray(m[k]) for k in ("keep_idx", "masked_idx", "mask"))
  assert keep.shape == (B, c.num_visible) and masked.shape == (B, c.num_masked)
  assert keep.dtype == masked.dtype == np.int32 and mask.dtype == bool
  np.testing.assert_array_equal(mask.sum(1), c.num_masked)
  for b in range(B):
    assert sorted(np.concatenate([keep[b], masked[b]])) == list(range(c.num_tokens))
    assert not mask[b, keep[b]].any() and mask[b, masked[b]].all()
    assert (np.diff(keep[b]) > 0).all()
  grid = _grid(mask, config)
  # At least the configured leads / times are hidden everywhere (more only by chance).
  assert (grid.all(axis=2).sum(1) >= c.leads_hidden).all()
  assert (grid.all(axis=1).sum(1) >= c.times_hidden).all()


def test_spatial_and_temporal_structure_exact(config):
  config = pretrain.get_config("size=tiny")
  config.mask.token_ratio = 0.0
  c = masking.ecg_mask_counts(config)
  grid = _grid(masking.sample_ecg_mask(jax.random.key(1), B, config)["mask"], config)
  leads_all = grid.all(axis=2)   # every time patch of the lead hidden
  times_all = grid.all(axis=1)   # the time patch hidden in every lead
  np.testing.assert_array_equal(leads_all.sum(1), c.leads_hidden)
  np.testing.assert_array_equal(times_all.sum(1), c.times_hidden)
  # Nothing else is hidden: the mask is exactly the union of those rows and columns.
  np.testing.assert_array_equal(grid, leads_all[:, :, None] | times_all[:, None, :])
  # Records draw their own leads.
  assert len({tuple(np.flatnonzero(r)) for r in leads_all}) > 1


def test_no_ecg_masking(config):
  config = pretrain.get_config("size=tiny,variant=contrastive")
  c = masking.ecg_mask_counts(config)
  assert (c.num_visible, c.num_masked) == (240, 0)
  m = masking.sample_ecg_mask(jax.random.key(0), 2, config)
  np.testing.assert_array_equal(m["keep_idx"], np.tile(np.arange(240), (2, 1)))
  assert m["masked_idx"].shape == (2, 0) and not np.asarray(m["mask"]).any()


def test_rng_changes_masks(config):
  a = masking.sample_ecg_mask(jax.random.key(0), B, config)["mask"]
  b = masking.sample_ecg_mask(jax.random.key(1), B, config)["mask"]
  a2 = masking.sample_ecg_mask(jax.random.key(0), B, config)["mask"]
  np.testing.assert_array_equal(a, a2)
  assert (np.asarray(a) != np.asarray(b)).any()


def _reports(config, lengths, seed=0):
  L = config.model.max_report_len
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(lengths), L), np.int32)
  for i, n in enumerate(lengths):
    if n:
      ids[i, 0], ids[i, n - 1] = features.BOS_ID, features.EOS_ID
      ids[i, 1:n - 1] = rng.integers(features.NUM_SPECIAL, config.model.vocab_size, n - 2)
  return ids, np.array(lengths, np.int32)


def test_text_mask_only_real_tokens(config):
  L = config.model.max_report_len
  lengths = [L, 40, 7, 3, 0] * 40
  ids, lens = _reports(config, lengths)
  m = masking.sample_text_mask(jax.random.key(0), ids, lens, config)
  K = masking.num_text_slots(config)
  assert K == int(np.ceil(0.15 * L))
  pos, tgt, w, inp = (np.asarray(m[k]) for k in ("positions", "targets", "weights", "input_ids"))
  assert pos.shape == tgt.shape == w.shape == (len(lengths), K)
  n_real = np.maximum(np.array(lengths) - 2, 0)
  np.testing.assert_array_equal(w.sum(1), np.ceil(0.15 * n_real))
  rows = np.arange(len(lengths))[:, None]
  picked = w > 0
  # Selected positions are real tokens (not PAD/BOS/EOS); targets are the original ids.
  assert (ids[rows, pos][picked] >= features.NUM_SPECIAL).all()
  np.testing.assert_array_equal(tgt[picked], ids[rows, pos][picked])
  assert (tgt[~picked] == features.PAD_ID).all()
  # Only selected positions may change; PAD/BOS/EOS never do.
  changed = inp != ids
  sel = np.zeros_like(changed)
  sel[np.broadcast_to(rows, pos.shape)[picked], pos[picked]] = True
  assert not (changed & ~sel).any()
  special = ids < features.NUM_SPECIAL
  np.testing.assert_array_equal(inp[special], ids[special])
  # 80 / 10 / 10: MASK, a random non-special id, unchanged (loose bounds).
  new = inp[np.broadcast_to(rows, pos.shape)[picked], pos[picked]]
  frac_mask = np.mean(new == features.MASK_ID)
  frac_keep = np.mean(new == tgt[picked])
  assert 0.75 < frac_mask < 0.85 and 0.06 < frac_keep < 0.15
  assert (new[new != features.MASK_ID] >= features.NUM_SPECIAL).all()


def test_text_mask_follows_a_wordpiece_datasets_special_ids():
  """BERT-layout ids ([PAD]=0, [UNK]=3, [CLS]=4, [SEP]=5, [MASK]=6, as the build_info of a
  `--tokenizer=hf:DIR` dataset says): 1 and 2 are ordinary tokens here, 4..6 are not."""
  config = pretrain.get_config("size=tiny")
  special = dict(pad=0, unk=3, bos=4, eos=5, mask=6)
  config.model.special_ids = special
  config.model.normal_ids_start = 7
  config.model.vocab_size = 50
  L = config.model.max_report_len
  rng = np.random.default_rng(0)
  n = 64
  ids = np.zeros((n, L), np.int64)
  body = rng.integers(1, 50, (n, 30))
  body[body == 6] = 1  # no [MASK] in the input, so a new 6 is the masking's own
  ids[:, 0], ids[:, 1:31], ids[:, 31] = 4, body, 5
  lens = np.full(n, 32)
  m = masking.sample_text_mask(jax.random.key(1), ids, lens, config)
  pos, w, inp = (np.asarray(m[k]) for k in ("positions", "weights", "input_ids"))
  rows = np.broadcast_to(np.arange(n)[:, None], pos.shape)
  picked_ids = ids[rows[w > 0], pos[w > 0]]
  assert not np.isin(picked_ids, list(special.values())).any()
  assert np.isin(picked_ids, [1, 2]).any()  # ids below NUM_SPECIAL are candidates here
  new = inp[rows[w > 0], pos[w > 0]]
  assert 0.75 < np.mean(new == 6) < 0.85
  assert ((new == 6) | (new >= 7) | (new == picked_ids)).all()
  assert (inp[:, 0] == 4).all() and (inp[:, 31] == 5).all()


def test_text_mask_off(config):
  config = pretrain.get_config("size=tiny,variant=ecg_mask")
  ids, lens = _reports(config, [20, 5])
  m = masking.sample_text_mask(jax.random.key(0), ids, lens, config)
  np.testing.assert_array_equal(m["input_ids"], ids)
  assert m["positions"].shape == (2, 0)


def test_sample_masks_streams(config):
  ids, lens = _reports(config, [30] * 4)
  batch = dict(ecg=np.zeros((4, 12, 1000), np.float32), report_ids=ids, report_len=lens)
  m = masking.sample_masks(jax.random.key(5), batch, config)
  np.testing.assert_array_equal(
      m["ecg"]["mask"], masking.sample_ecg_mask(jax.random.fold_in(jax.random.key(5), 0), 4,
                                                config)["mask"])
  np.testing.assert_array_equal(
      m["text"]["positions"],
      masking.sample_text_mask(jax.random.fold_in(jax.random.key(5), 1), ids, lens,
                               config)["positions"])


def test_patch_size_check(config):
  config = pretrain.get_config("size=tiny")
  config.model.patch_size = 30
  with pytest.raises(ValueError, match="not divisible by model.patch_size"):
    masking.ecg_mask_counts(config)


def test_masked_kind_names_the_step_that_hid_each_token(config):
  c = masking.ecg_mask_counts(config)
  C = config.model.num_leads
  Tp = c.num_tokens // C
  m = masking.sample_ecg_mask(jax.random.key(3), B, config)
  kind, masked = np.asarray(m["masked_kind"]), np.asarray(m["masked_idx"])
  assert kind.shape == masked.shape and kind.dtype == np.int32
  assert masking.MASK_KINDS == ("random", "lead", "time")
  # Exactly the configured counts: times in every lead, then leads at the other times, then
  # the random step's tokens.
  np.testing.assert_array_equal((kind == 2).sum(1), c.times_hidden * C)
  np.testing.assert_array_equal((kind == 1).sum(1), c.leads_hidden * (Tp - c.times_hidden))
  np.testing.assert_array_equal((kind == 0).sum(1), c.tokens_hidden)
  for b in range(B):
    lead, t = masked[b] // Tp, masked[b] % Tp
    time_patches = set(t[kind[b] == 2])
    hidden_leads = set(lead[kind[b] == 1])
    assert len(time_patches) == c.times_hidden and len(hidden_leads) == c.leads_hidden
    # A randomly hidden token lies in neither a hidden lead nor a hidden time patch.
    rand = kind[b] == 0
    assert not set(t[rand]) & time_patches and not set(lead[rand]) & hidden_leads
  off = masking.sample_ecg_mask(jax.random.key(0), 2,
                                pretrain.get_config("size=tiny,variant=contrastive"))
  assert off["masked_kind"].shape == (2, 0)
