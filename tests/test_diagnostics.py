"""Per-term gradient diagnostics and the terms' ramp-in weights, on real PTB-XL batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdmer_jax import losses
from cgdmer_jax import objective
from cgdmer_jax.data import reader
from cgdmer_jax.train import diagnostics
from cgdmer_jax.train import loop
from cgdmer_jax.train import optim
from configs import pretrain
from tests import test_train


def _batch(config):
  loop.apply_dataset_info(config, reader.load_info(config.data.dir))
  local = next(reader.train_batches(config.data.dir, global_batch_size=8, seed=0,
                                    process_index=0, process_count=1))
  return {k: jnp.asarray(v) for k, v in local.items()}


def _group_norms(grads):
  sq = {}
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    group = diagnostics.group_of(optim.path_names(path))
    if group is not None:
      sq[group] = sq.get(group, 0.0) + float(jnp.sum(jnp.square(g)))
  return {g: np.sqrt(v) for g, v in sq.items()}


@pytest.mark.slow
def test_term_gradients_match_each_terms_own_gradient(ptbxl_tfrecords):
  config = test_train.tiny_config(ptbxl_tfrecords)
  batch = _batch(config)
  graphdef, params = objective.init(config, 0)
  rng, step = jax.random.key(5), jnp.int32(3)
  mets = jax.jit(diagnostics.term_gradients_fn(graphdef, config))(params, batch, rng, step)
  # Each term alone, by its own jax.grad: the diagnostics must agree group by group.
  own_grads = jax.jit(lambda p: {
      t: jax.grad(lambda q, t=t: objective.loss_fn(q, graphdef, batch, rng, config,
                                                   step)[1][f"loss/{t}"])(p)
      for t in losses.TERMS})(params)
  for term in losses.TERMS:
    own = _group_norms(own_grads[term])
    for group, norm in own.items():
      got = float(mets[f"grad_norm/{term}/{group}"])
      assert got == pytest.approx(config.loss[term] * norm, rel=1e-3, abs=1e-7), (term, group)
  # The ECG term never reaches the report backbone; every metric is finite; cosines in [-1, 1].
  assert float(mets["grad_norm/ecg/text_backbone"]) == 0.0
  assert float(mets["grad_norm/contrastive/shared"]) > 0.0
  assert all(np.isfinite(float(v)) for v in mets.values())
  for k, v in mets.items():
    if k.startswith("grad_cos/"):
      assert -1.0 - 1e-5 <= float(v) <= 1.0 + 1e-5, k


def test_term_scales_ramp_in():
  config = pretrain.get_config("size=tiny")
  # No ramp: plain floats, the static program.
  assert losses.term_scales(config, jnp.int32(0)) == {k: float(config.loss[k])
                                                      for k in losses.TERMS}
  config.loss.ramp_start.contrastive = 100
  config.loss.ramp_steps.contrastive = 50
  config.loss.ramp_start.ecg = 10
  w = config.loss.contrastive

  def at(s):
    return {k: float(v) for k, v in losses.term_scales(config, jnp.int32(s)).items()}

  assert at(0)["contrastive"] == 0.0 and at(99)["contrastive"] == 0.0
  assert at(100)["contrastive"] == pytest.approx(w / 50)
  assert at(124)["contrastive"] == pytest.approx(w * 25 / 50)
  assert at(149)["contrastive"] == pytest.approx(w) and at(10_000)["contrastive"] == w
  assert at(9)["ecg"] == 0.0 and at(10)["ecg"] == config.loss.ecg     # a step, no ramp
  assert at(0)["text"] == config.loss.text
  # Evaluation (no step): the full weights.
  assert losses.term_scales(config, None)["contrastive"] == w


def test_ramped_term_is_off_before_it_starts(ptbxl_tfrecords):
  config = test_train.tiny_config(ptbxl_tfrecords, **{"loss.ramp_start.contrastive": 10})
  batch = _batch(config)
  graphdef, params = objective.init(config, 0)
  rng = jax.random.key(1)
  loss0, m0 = objective.loss_fn(params, graphdef, batch, rng, config, jnp.int32(0))
  loss_full, _ = objective.loss_fn(params, graphdef, batch, rng, config, jnp.int32(10))
  assert float(loss_full - loss0) == pytest.approx(
      config.loss.contrastive * float(m0["loss/contrastive"]), rel=1e-5)
