"""The speed options compute the same thing: einsum attention, in-step batch chunks, prefetch."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdmer_jax import objective
from cgdmer_jax.models import layers
from cgdmer_jax.perf import step_timing
from cgdmer_jax.train import accumulate
from cgdmer_jax.train import loop
from cgdmer_jax.train import prefetch
from cgdmer_jax.train import sharding
from configs import pretrain


def test_einsum_attention_matches_dot_product_attention():
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (3, 11, 2, 8)) for key in (kq, kk, kv))
  kv_len = jnp.array([11, 4, 1], jnp.int32)
  for lens in (None, kv_len):
    ref = lambda q, k, v: jnp.sum(jnp.sin(jax.nn.dot_product_attention(  # noqa: E731
        q, k, v, key_value_seq_lengths=lens, implementation="xla")))
    new = lambda q, k, v: jnp.sum(jnp.sin(  # noqa: E731
        layers.einsum_attention(q, k, v, lens, 8 ** -0.5)))
    np.testing.assert_allclose(new(q, k, v), ref(q, k, v), rtol=1e-5)
    for a, b in zip(jax.grad(new, (0, 1, 2))(q, k, v), jax.grad(ref, (0, 1, 2))(q, k, v)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cudnn_attention_pads_odd_lengths_exactly():
  # The padding cuDNN's backward needs (odd length + 1), run through XLA's kernel off a GPU:
  # outputs and gradients equal unpadded attention, with and without padding keys.
  kq, kk, kv = jax.random.split(jax.random.key(2), 3)
  for n in (11, 10):
    q, k, v = (jax.random.normal(key, (3, n, 2, 8)) for key in (kq, kk, kv))
    for lens in (None, jnp.array([n, 4, 1], jnp.int32)):
      ref = lambda q, k, v: jnp.sum(jnp.sin(jax.nn.dot_product_attention(  # noqa: E731
          q, k, v, key_value_seq_lengths=lens, implementation="xla")))
      new = lambda q, k, v: jnp.sum(jnp.sin(layers.cudnn_attention(  # noqa: E731
          q, k, v, lens, implementation="xla")))
      np.testing.assert_allclose(new(q, k, v), ref(q, k, v), rtol=1e-5)
      for a, b in zip(jax.grad(new, (0, 1, 2))(q, k, v), jax.grad(ref, (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _masked_config(**model):
  config = pretrain.get_config("size=tiny,variant=ecg_mask_only")
  config.data.seconds = 5.0
  for key, value in model.items():
    config.model[key] = value
  return config


def test_batch_chunks_same_loss_and_grads():
  config = _masked_config()
  chunked = _masked_config(batch_chunks=4)
  graphdef, params = objective.init(config, 0)
  batch = step_timing.synthetic_batch(config, 8)
  # Padding and a missing lead make the chunks' weight sums differ: the global mean must hold.
  batch["valid_len"][:3] = 120
  batch["lead_mask"][5, 2:] = False
  rng = jax.random.key(1)

  def value_and_grad(c):
    return jax.jit(accumulate.make_loss_and_grads_fn(graphdef, c))(params, batch, rng)

  (loss, mets), grads = value_and_grad(config)
  (loss_c, mets_c), grads_c = value_and_grad(chunked)
  np.testing.assert_allclose(float(loss_c), float(loss), rtol=1e-5)
  np.testing.assert_allclose(float(mets_c["loss/ecg"]), float(mets["loss/ecg"]), rtol=1e-5)
  for kind in ("random", "lead", "time"):   # the per-masking-step errors are whole-batch too
    np.testing.assert_allclose(float(mets_c[f"ecg_mse/{kind}"]),
                               float(mets[f"ecg_mse/{kind}"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
  # Forward only (evaluation) takes the chunked path too.
  fwd = jax.jit(accumulate.make_loss_fn(graphdef, chunked))
  loss_f, mets_f = fwd(params, batch, rng)
  np.testing.assert_allclose(float(loss_f), float(loss), rtol=1e-5)
  np.testing.assert_allclose(float(mets_f["ecg_mse/time"]), float(mets["ecg_mse/time"]),
                             rtol=1e-5)


def test_batch_chunks_refuse_coupled_losses():
  config = pretrain.get_config("size=tiny")
  config.model.batch_chunks = 2
  graphdef, params = objective.init(config, 0)
  with pytest.raises(ValueError, match="per-example"):
    jax.eval_shape(accumulate.make_loss_and_grads_fn(graphdef, config),
                   params, objective.dummy_batch(config, 4), jax.random.key(0))


def test_batch_chunks_sharded_train_step():
  """The chunked step on 8 devices equals the plain one (chunks stay spread over devices)."""
  results = []
  for chunks in (1, 2):
    config = _masked_config(batch_chunks=chunks)
    config.data.batch_size = 16
    mesh = sharding.make_mesh(config)
    s = loop.setup(config, mesh)
    with jax.set_mesh(mesh):
      state = s.init_state()
      batch = sharding.global_batch(step_timing.synthetic_batch(config, 16), mesh)
      fn = jax.jit(accumulate.make_loss_and_grads_fn(s.graphdef, config))
      (loss, _), grads = fn(state["params"], batch, jax.random.key(2))
      results.append((float(loss), jax.device_get(grads)))
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[0][1])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_device_prefetch_yields_the_stream_in_order():
  config = pretrain.get_config("size=tiny")
  mesh = sharding.make_mesh(config)
  local = [{"x": np.full((8, 3), i, np.float32), "name": np.array(["a"] * 8)} for i in range(5)]
  for ahead in (0, 2):
    got = [int(b["x"][0, 0]) for b in prefetch.device_batches(iter(local), mesh, ahead)]
    assert got == list(range(5))

  def broken():
    yield local[0]
    raise RuntimeError("reader failed")
  it = prefetch.device_batches(broken(), mesh, 2)
  next(it)
  with pytest.raises(RuntimeError, match="reader failed"):
    next(it)
