"""The chunked (ring) SigLIP loss equals the all-gather loss, values and gradients, on 8 devices.

Meshes: the batch over ('data', 'fsdp') = (8, 1) and (4, 2), both axes forming the ring.
Rows without a report are masked identically in both forms; the plain loss is the reference.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdmer_jax import losses
from cgdmer_jax import siglip
from cgdmer_jax.perf import siglip_memory
from cgdmer_jax.train import sharding
from configs import pretrain


def _embeddings(B, D, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  zimg = jax.random.normal(k1, (B, D))
  ztxt = 0.5 * zimg + jax.random.normal(k2, (B, D))  # paired rows correlate
  zimg = zimg / jnp.linalg.norm(zimg, axis=-1, keepdims=True)
  ztxt = ztxt / jnp.linalg.norm(ztxt, axis=-1, keepdims=True)
  valid = jax.random.uniform(k3, (B,)) > 0.25
  return zimg, ztxt, valid


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2)])
@pytest.mark.parametrize("with_valid", [True, False])
def test_chunked_equals_all_gather_loss_and_grads(data, fsdp, with_valid):
  assert jax.device_count() == 8
  config = pretrain.get_config("size=tiny")
  config.mesh.data, config.mesh.fsdp = data, fsdp
  mesh = sharding.make_mesh(config)
  B, D = 32, 16
  zimg, ztxt, valid = _embeddings(B, D)
  valid = valid if with_valid else None
  # A temperature and bias away from the init so that every term of the gradient matters.
  temp, bias = jnp.float32(3.7), jnp.float32(-2.0)

  def grads(fn):
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(
        zimg_s, ztxt_s, temp, bias, valid_s)

  with jax.set_mesh(mesh):
    put = functools.partial(jax.device_put, device=sharding.batch_sharding(mesh))
    zimg_s, ztxt_s = put(zimg), put(ztxt)
    valid_s = None if valid is None else put(valid)
    ref_loss, ref_grads = grads(siglip.siglip_loss)
    loss, g = grads(siglip.siglip_loss_chunked)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for a, b in zip(g, ref_grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # And the reference on one device, with no sharding at all.
  plain = siglip.siglip_loss(zimg, ztxt, temp, bias, valid)
  np.testing.assert_allclose(float(loss), float(plain), rtol=1e-5)


def test_total_switch_and_padding_rows():
  """`loss.siglip_impl` picks the form; eval padding rows (`mask`) count in neither."""
  config = pretrain.get_config("size=tiny,variant=contrastive")
  mesh = sharding.make_mesh(config)
  B, D = 16, 8
  zimg, ztxt, has_report = _embeddings(B, D, seed=1)
  outputs = {"ecg/embedding": zimg, "text/embedding": ztxt,
             "siglip/temperature": jnp.float32(10.0), "siglip/bias": jnp.float32(-5.0)}
  row_ok = jnp.arange(B) < 12  # the last 4 rows are eval padding
  batch = {"has_report": has_report, "mask": row_ok}
  results = {}
  for impl in siglip.IMPLS:
    config.loss.siglip_impl = impl
    with jax.set_mesh(mesh):
      put = functools.partial(jax.device_put, device=sharding.batch_sharding(mesh))
      out_s = {k: (put(v) if v.ndim else v) for k, v in outputs.items()}
      batch_s = {k: put(v) for k, v in batch.items()}
      fn = jax.jit(lambda o, b: losses.total(o, b, {}, config)[1]["loss/contrastive"])
      results[impl] = float(fn(out_s, batch_s))
  expected = siglip.siglip_loss(zimg[:12], ztxt[:12], 10.0, -5.0, has_report[:12])
  np.testing.assert_allclose(results["chunked"], results["all_gather"], rtol=1e-5)
  np.testing.assert_allclose(results["all_gather"], float(expected), rtol=1e-5)
  with pytest.raises(ValueError, match="siglip_impl"):
    siglip.siglip("dense")


def test_memory_report_chunked_is_smaller():
  config = pretrain.get_config("size=tiny")
  mesh = sharding.make_mesh(config)
  report = siglip_memory.memory_report(mesh, global_batch=4096, dim=64)
  # all-gather holds [B/8, B] logits (and their gradient) per device; chunked [B/8, B/8].
  assert report["chunked"]["temp_bytes"] * 3 < report["all_gather"]["temp_bytes"], report
