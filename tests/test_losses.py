"""The pretraining losses on constructed inputs, and `total`'s switches."""

import jax
import jax.numpy as jnp
import numpy as np

from cgdmer_jax import losses
from cgdmer_jax import siglip
from configs import pretrain

TEMP10 = 10.0


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_siglip_matched_lower_than_shuffled():
  rng = np.random.default_rng(0)
  z = _unit(rng.normal(size=(16, 32))).astype(np.float32)
  txt = _unit(z + 0.1 * rng.normal(size=z.shape)).astype(np.float32)
  matched = siglip.siglip_loss(z, txt, TEMP10, -10.0)
  shuffled = siglip.siglip_loss(z, txt[rng.permutation(16)], TEMP10, -10.0)
  assert float(matched) < float(shuffled)


def test_siglip_value_and_valid_rows():
  # Orthogonal unit embeddings, matched: positives cos 1, negatives cos 0.
  z = np.eye(4, dtype=np.float32)
  t, b = 10.0, -5.0
  want = np.log1p(np.exp(-(t + b))) + 3 * np.log1p(np.exp(b))
  np.testing.assert_allclose(siglip.siglip_loss(z, z, t, b), want, rtol=1e-5)
  # Rows without a report are excluded: changing them changes nothing.
  valid = np.array([1, 1, 1, 0], bool)
  other = z.copy()
  other[3] = _unit(np.ones(4, np.float32))
  a = siglip.siglip_loss(z, z, t, b, valid)
  c = siglip.siglip_loss(z, other, t, b, valid)
  np.testing.assert_allclose(a, c, rtol=1e-6)
  np.testing.assert_allclose(a, np.log1p(np.exp(-(t + b))) + 2 * np.log1p(np.exp(b)),
                             rtol=1e-5)


def test_masked_patch_mse():
  rng = np.random.default_rng(0)
  target = rng.normal(size=(2, 5, 8)).astype(np.float32)
  w = np.ones((2, 5), np.float32)
  assert float(losses.masked_patch_mse(target, target, w)) == 0.0
  pred = target.copy()
  pred[0, 0] += 3.0   # an error only where the weight is 0 does not count
  w[0, 0] = 0.0
  assert float(losses.masked_patch_mse(pred, target, w)) == 0.0
  pred[1, 1] += 2.0
  np.testing.assert_allclose(losses.masked_patch_mse(pred, target, w), 4.0 / 9, rtol=1e-6)


def test_mse_by_mask_kind_splits_the_masked_patch_mse():
  rng = np.random.default_rng(1)
  pred, target = (rng.normal(size=(3, 6, 4)).astype(np.float32) for _ in range(2))
  w = np.ones((3, 6), np.float32)
  w[0, 1] = 0.0
  kind = np.array([[0, 0, 1, 2, 2, 2]] * 3, np.int32)
  kind[2] = 2   # a record with every hidden patch of one kind
  per = losses.mse_by_mask_kind(pred, target, w, kind)
  assert set(per) == {"ecg_mse/random", "ecg_mse/lead", "ecg_mse/time"}
  err = ((pred - target) ** 2).mean(-1)
  for i, name in enumerate(("random", "lead", "time")):
    sel = (kind == i) & (w > 0)
    np.testing.assert_allclose(per[f"ecg_mse/{name}"], err[sel].mean(), rtol=1e-5)
  # Weighted by their patch counts the kinds give back the whole masked-patch MSE.
  counts = [((kind == i) * w).sum() for i in range(3)]
  np.testing.assert_allclose(
      sum(c * float(per[f"ecg_mse/{n}"]) for c, n in zip(counts, ("random", "lead", "time")))
      / w.sum(), losses.masked_patch_mse(pred, target, w), rtol=1e-5)


def test_masked_token_ce():
  logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]], np.float32))
  targets = np.array([[0, 2]])
  np.testing.assert_allclose(losses.masked_token_ce(logits, targets, np.array([[1.0, 1.0]])),
                             -(np.log(0.5) + np.log(0.8)) / 2, rtol=1e-5)
  np.testing.assert_allclose(losses.masked_token_ce(logits, targets, np.array([[0.0, 1.0]])),
                             -np.log(0.8), rtol=1e-5)


def test_disentangle_zero_orthogonal_positive_identical():
  # Columns of a 4x4 Hadamard matrix: zero-mean over the batch and mutually orthogonal.
  h = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], np.float32)
  shared, specific = h[:, 1:2], h[:, 2:4]
  assert abs(float(losses.disentangle_loss(shared, specific))) < 1e-7
  # Invariant to scale and offset of each feature.
  assert abs(float(losses.disentangle_loss(3 * shared + 7, specific - 2))) < 1e-7
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 6)).astype(np.float32)
  same = float(losses.disentangle_loss(x, x))
  assert same > 0.1
  np.testing.assert_allclose(losses.disentangle_loss(x[:, :1], 5 * x[:, :1]), 1.0, rtol=1e-5)
  assert float(losses.disentangle_loss(x, rng.normal(size=(8, 6)))) < same


def _fake_outputs(B=4, M=3, P=5, K=2, V=7, E=6, rng=np.random.default_rng(0)):

  def f(*s):
    return jnp.asarray(rng.normal(size=s), jnp.float32)

  return {"ecg/shared": f(B, E), "ecg/specific": f(B, E), "text/shared": f(B, E),
          "text/specific": f(B, E), "ecg/embedding": _unit(f(B, E)),
          "text/embedding": _unit(f(B, E)), "ecg/recon": f(B, M, P), "ecg/target": f(B, M, P),
          "ecg/weight": jnp.ones((B, M)), "text/logits": f(B, K, V),
          "siglip/temperature": jnp.float32(10.0), "siglip/bias": jnp.float32(-10.0)}


def test_total_switches_terms():
  B = 4
  batch = dict(has_report=np.array([1, 1, 1, 0], bool))
  masks = dict(text=dict(targets=np.zeros((B, 2), np.int32), weights=np.ones((B, 2))))
  out = _fake_outputs(B)
  keys = {"loss/ecg", "loss/text", "loss/contrastive", "loss/disentangle"}
  for variant in ("full", "contrastive", "contrastive_masked", "ecg_mask", "text_mask",
                  "ecg_mask_only"):
    config = pretrain.get_config(f"variant={variant}")
    loss, metrics = losses.total(out, batch, masks, config)
    active = {f"loss/{k}" for k in ("ecg", "text", "contrastive", "disentangle")
              if config.loss[k] > 0}
    assert set(metrics) & keys == active, variant
    assert ("siglip/temperature" in metrics) == (config.loss.contrastive > 0)
    assert not any(k.startswith("ecg_mse/") for k in metrics)   # no mask kinds given
    np.testing.assert_allclose(
        loss, sum(config.loss[k.split("/")[1]] * float(metrics[k]) for k in active), rtol=1e-6)
  # Weights scale their term.
  config = pretrain.get_config("variant=full")
  config.loss.text = 2.0
  loss2, m2 = losses.total(out, batch, masks, config)
  np.testing.assert_allclose(loss2 - float(losses.total(out, batch, masks,
                                                        pretrain.get_config())[0]),
                             m2["loss/text"], rtol=1e-5)


def test_siglip_jit_sharded_batch():
  """Under jit with the batch on a `data` mesh axis the loss equals the unsharded one.

  Auto axes, as `cgdmer_jax.train.sharding` builds the mesh: XLA gathers the [B, B] logits'
  operands.
  """
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(1)
  z = _unit(rng.normal(size=(16, 8))).astype(np.float32)
  t = _unit(rng.normal(size=(16, 8))).astype(np.float32)
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  with jax.set_mesh(mesh):
    got = jax.jit(siglip.siglip_loss)(jax.device_put(z, sh), jax.device_put(t, sh), TEMP10,
                                      -10.0)
  np.testing.assert_allclose(got, siglip.siglip_loss(z, t, TEMP10, -10.0), rtol=1e-5)
