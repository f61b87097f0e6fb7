"""Per-term gradient balancing (`loss.balance='grad_norm'`): the weights, on real PTB-XL batches."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdmer_jax import losses
from cgdmer_jax import objective
from cgdmer_jax.train import balance
from cgdmer_jax.train import diagnostics
from cgdmer_jax.train import loop
from configs import pretrain
from tests import test_diagnostics
from tests import test_train


def _config(**loss):
  config = pretrain.get_config("size=tiny")
  config.loss.balance = "grad_norm"
  for k, v in loss.items():
    config.loss[k] = v
  return config


def test_multipliers_equalise_the_weighted_norms():
  config = _config(balance_decay=0.5)
  g = {"ecg": 0.004, "text": 0.2, "contrastive": 3.0, "disentangle": 0.4}
  state = balance.update(balance.init_state(config), g, config)
  lam = {k: float(v) for k, v in balance.multipliers(state, config).items()}
  # lambda_t * G_t is the same for every term: the geometric mean of the G_t.
  geo = math.exp(np.mean([math.log(v) for v in g.values()]))
  for k in g:
    assert lam[k] * g[k] == pytest.approx(geo, rel=1e-5), k
  assert math.prod(lam.values()) == pytest.approx(1.0, rel=1e-5)
  assert lam["ecg"] > 1.0 > lam["contrastive"]
  # The second measurement is averaged in the log domain with the decay.
  g2 = dict(g, ecg=0.4)
  state2 = balance.update(state, g2, config)
  assert float(state2["log_gnorm/ecg"]) == pytest.approx(
      0.5 * math.log(0.004) + 0.5 * math.log(0.4), rel=1e-5)
  assert int(state2["updates"]) == 2
  # A term with no gradient this time (zero or not finite) keeps its average.
  state3 = balance.update(state2, dict(g2, text=0.0, ecg=float("nan")), config)
  assert float(state3["log_gnorm/text"]) == float(state2["log_gnorm/text"])
  assert float(state3["log_gnorm/ecg"]) == float(state2["log_gnorm/ecg"])


def test_multipliers_are_capped_and_start_at_one():
  config = _config(balance_max=10.0)
  lam0 = balance.multipliers(balance.init_state(config), config)
  assert all(float(v) == 1.0 for v in lam0.values())
  state = balance.update(balance.init_state(config),
                         {"ecg": 1e-8, "text": 1.0, "contrastive": 1.0, "disentangle": 1.0},
                         config)
  lam = balance.multipliers(state, config)
  assert float(lam["ecg"]) == pytest.approx(10.0, rel=1e-5)


def test_switched_off_terms_are_not_balanced():
  config = _config(text=0.0, disentangle=0.0)
  assert balance.active_terms(config) == ["ecg", "contrastive"]
  assert set(balance.init_state(config)) == {"log_gnorm/ecg", "log_gnorm/contrastive", "updates"}
  assert not balance.enabled(pretrain.get_config("size=tiny,variant=ecg_mask_only"))
  bad = _config()
  bad.loss.balance = "gradnorm"
  with pytest.raises(ValueError, match="unknown loss.balance"):
    balance.method(bad)


def test_measured_weights_equalise_the_terms_gradients(ptbxl_tfrecords):
  # The chain the trainer runs: diagnostics measure G_t, the update sets the multipliers,
  # and the weighted gradients on the shared parameters are then loss.<t> times one norm.
  config = test_train.tiny_config(ptbxl_tfrecords, **{"loss.balance": "grad_norm"})
  batch = test_diagnostics._batch(config)
  graphdef, params = objective.init(config, 0)
  rng, step = jax.random.key(2), jnp.int32(0)
  diag = jax.jit(diagnostics.term_gradients_fn(graphdef, config))
  raw = diag(params, batch, rng, step)
  g = {k: raw[balance.GNORM_PREFIX + k] for k in losses.TERMS}
  assert len({round(float(v), 6) for v in g.values()}) == 4  # the terms really differ
  lam = balance.multipliers(balance.update(balance.init_state(config), g, config), config)
  weighted = diag(params, batch, rng, step, lam)
  norms = [math.sqrt(sum(float(weighted[f"grad_norm/{k}/{grp}"]) ** 2
                         for grp in diagnostics.GROUPS if f"grad_norm/{k}/{grp}" in weighted))
           / config.loss[k] for k in losses.TERMS]
  np.testing.assert_allclose(norms, norms[0], rtol=1e-3)
  # And the step's loss uses the same multipliers.
  _, m = objective.loss_fn(params, graphdef, batch, rng, config, step)
  loss_b, _ = objective.loss_fn(params, graphdef, batch, rng, config, step, lam)
  want = sum(float(lam[k]) * config.loss[k] * float(m[f"loss/{k}"]) for k in losses.TERMS)
  assert float(loss_b) == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_balanced_run_logs_weights_and_resumes_exactly(tmp_path, ptbxl_tfrecords):
  over = {"loss.balance": "grad_norm", "loss.balance_every_steps": 4,
          "checkpoint.every_steps": 100}
  straight, split = tmp_path / "straight", tmp_path / "split"
  loop.train_and_evaluate(test_train.tiny_config(ptbxl_tfrecords, steps_per_run=10, **over),
                           str(straight))
  for _ in range(2):
    loop.train_and_evaluate(test_train.tiny_config(ptbxl_tfrecords, steps_per_run=5, **over),
                             str(split))
  rows = test_train.read_metrics(straight)
  logged = [r for r in rows if "weight/ecg" in r]
  assert logged and all(np.isfinite(r[f"weight/{k}"]) and r[f"weight/{k}"] > 0
                        for r in logged for k in losses.TERMS)
  # `loss` is the terms at their set weights (comparable over steps); the balanced objective
  # the step differentiates is `loss/objective`.
  config = test_train.tiny_config(ptbxl_tfrecords)
  for r in rows:
    assert r["loss"] == pytest.approx(sum(config.loss[k] * r[f"loss/{k}"] for k in losses.TERMS),
                                      rel=1e-4)
  assert any(abs(r["loss/objective"] - r["loss"]) > 1e-3 * r["loss"] for r in rows)
  # Not the static weights: the terms' gradients differ, so the multipliers do.
  assert len({round(logged[-1][f"weight/{k}"], 6) for k in losses.TERMS}) > 1
  pa, _ = test_train.params_of(straight, test_train.tiny_config(ptbxl_tfrecords, **over))
  pb, _ = test_train.params_of(split, test_train.tiny_config(ptbxl_tfrecords, **over))
  for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(a, b)
