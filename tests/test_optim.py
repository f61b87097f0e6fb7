"""The optimizer: decay mask and the SigLIP scalars' learning-rate multiplier."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdmer_jax import objective
from cgdmer_jax.train import optim
from configs import pretrain


def _one_update(mult):
  config = pretrain.get_config("size=tiny")
  config.optim.siglip_lr_mult = mult
  config.optim.warmup_steps = 0
  _, abstract = objective.abstract_init(config)
  params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), abstract)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
  tx, _ = optim.make_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates, optim.siglip_mask(params)


def test_siglip_lr_mult_scales_only_the_siglip_scalars():
  base, mask = _one_update(1.0)
  fast, _ = _one_update(10.0)
  flags = jax.tree.leaves(mask)
  assert sum(flags) == 2  # temperature and bias
  for b, f, is_siglip in zip(jax.tree.leaves(base), jax.tree.leaves(fast), flags):
    b, f = np.asarray(b), np.asarray(f)
    assert np.abs(b).max() > 0
    np.testing.assert_allclose(f, 10.0 * b if is_siglip else b, rtol=1e-6)


def test_siglip_lr_mult_must_be_positive():
  config = pretrain.get_config("size=tiny")
  config.optim.siglip_lr_mult = 0.0
  with pytest.raises(ValueError, match="siglip_lr_mult"):
    optim.make_optimizer(config)
