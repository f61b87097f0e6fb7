"""The disentanglement design options: the CKA term, its cross-modal pairs, heads on shared."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cgdmer_jax import losses
from cgdmer_jax import objective
from cgdmer_jax.perf import step_timing
from cgdmer_jax.train import accumulate
from configs import pretrain


def _features(seed: int, batch: int = 32, width: int = 64):
  a, b, w = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(a, (batch, width))
  return x, jax.random.normal(b, (batch, width)), x @ jax.random.normal(w, (width, width))


def _outputs(ecg_sh, ecg_sp, txt_sh, txt_sp):
  return {"ecg/shared": ecg_sh, "ecg/specific": ecg_sp, "text/shared": txt_sh,
          "text/specific": txt_sp}


def test_cka_term_sees_a_copy_that_pearson_does_not():
  ok = jnp.ones((32,), bool)
  copy_cka, indep_cka, copy_pearson, indep_pearson = [], [], [], []
  for seed in range(20):
    x, y, xw = _features(seed)
    z, _, zw = _features(seed + 100)
    copy = _outputs(x, xw, z, zw)        # each specific a linear function of its shared
    indep = _outputs(x, y, z, _features(seed + 200)[1])
    copy_cka.append(losses.disentangle_term(copy, ok, ok, "cka", False))
    indep_cka.append(losses.disentangle_term(indep, ok, ok, "cka", False))
    copy_pearson.append(losses.disentangle_term(copy, ok, ok, "pearson", False))
    indep_pearson.append(losses.disentangle_term(indep, ok, ok, "pearson", False))
  # Two pairs (ECG, report) of true CKA ~0.71 each against two independent pairs (~0).
  assert np.mean(copy_cka) > 1.2 and np.mean(indep_cka) < 0.15
  assert np.mean(copy_cka) - np.mean(indep_cka) > 1.0
  assert np.mean(copy_pearson) - np.mean(indep_pearson) < 0.06


def test_cross_pairs_see_a_specific_space_that_copies_the_other_modality():
  ok = jnp.ones((32,), bool)
  x, y, _ = _features(0)
  z, t, _ = _features(1)
  # ECG-specific a linear function of report-shared; each modality independent within.
  out = _outputs(x, z @ jax.random.normal(jax.random.key(9), (64, 64)), z, t)
  within = losses.disentangle_term(out, ok, ok, "cka", False)
  both = losses.disentangle_term(out, ok, ok, "cka", True)
  assert float(within) < 0.3 and float(both) - float(within) > 0.5
  # Rows without a report do not enter the cross pairs.
  no_report = losses.disentangle_term(out, ok, jnp.zeros((32,), bool), "cka", True)
  assert float(no_report) == pytest.approx(float(losses.disentangle_term(
      {k: v for k, v in out.items() if k.startswith("ecg")}, ok, ok, "cka", True)), abs=1e-6)


def test_cka_term_gradient_is_finite_on_constant_features():
  ok = jnp.ones((8,), bool)
  g = jax.grad(lambda s: losses.disentangle_term(
      _outputs(s, jnp.ones((8, 4)), s, s), ok, ok, "cka", True))(jnp.ones((8, 4)))
  assert bool(jnp.all(jnp.isfinite(g)))


def test_unknown_estimator_is_refused():
  x, y, _ = _features(0)
  with pytest.raises(ValueError, match="disentangle_estimator"):
    losses.disentangle_term(_outputs(x, y, x, y), None, None, "mine", False)


def _grad_norms(heads_shared: str) -> dict[str, float]:
  config = pretrain.get_config("size=tiny,variant=text_mask")
  config.data.seconds = 5.0
  config.loss.balance = "none"
  config.loss.contrastive = 0.0  # the generative terms alone
  config.model.heads_shared = heads_shared
  graphdef, params = objective.init(config, 0)
  batch = step_timing.synthetic_batch(config, 4)
  _, grads = jax.jit(accumulate.make_loss_and_grads_fn(graphdef, config))(
      params, batch, jax.random.key(0))
  norms: dict[str, float] = {}
  for path, leaf in nnx.to_flat_state(grads):
    if path[0] == "disentangle":
      key = str(path[1])
      norms[key] = norms.get(key, 0.0) + float(jnp.sum(jnp.square(leaf.get_value())))
  return norms


def test_stop_gradient_heads_leave_the_shared_encoder_to_the_other_terms():
  full, stopped = _grad_norms("full"), _grad_norms("stop_gradient")
  assert full["shared"] > 0 and stopped["shared"] == 0.0
  for specific in ("ecg_specific", "text_specific"):
    assert full[specific] > 0 and stopped[specific] > 0
