"""Per-term loss weights that keep every term's pull on the shared parameters comparable.

The CG-DMER terms train the same parameters (the modality-shared encoder and both
backbones) at gradient scales orders of magnitude apart: on the tiny model the masked-ECG
term's gradient there is 100-1000x below SigLIP's once its decoder predicts the mean, and
Adam, which normalises each parameter's step by the sum of every term's gradient, then moves
the encoder for the other terms only (docs/RECIPE.md, "Why the terms compete").

`loss.balance='grad_norm'` measures each term's unweighted gradient norm G_t on the
parameters terms share (`diagnostics.GROUPS`, all groups together) every
`loss.balance_every_steps` steps, on the step's own batch (`diagnostics.term_gradients_fn`),
keeps an exponential moving average of log G_t, and multiplies term t by

    lambda_t = geomean_s(G_s) / G_t     (clipped to [1 / balance_max, balance_max]),

so that every weighted gradient has the same norm, `loss.<t>` times the geometric mean
(the `loss.<t>` weights remain the terms' relative priorities, and the ramp-ins still apply).
This is GradNorm's target (Chen et al., ICML 2018) with a closed-form weight instead of a
learned one. The product of the multipliers is 1, and Adam is invariant to a common scale,
so only the terms' ratios change.

The moving averages are part of the train state (checkpointed, so a resumed run continues
with the same weights) and are replicated; the update is a pure function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cgdmer_jax import losses

METHODS = ("none", "grad_norm")
# `diagnostics.term_gradients_fn` reports G_t under this prefix.
GNORM_PREFIX = "balance/grad_norm/"


def method(config: ml_collections.ConfigDict) -> str:
  """`loss.balance`, validated."""
  m = config.loss.balance
  if m not in METHODS:
    raise ValueError(f"unknown loss.balance {m!r}; known: {list(METHODS)}")
  return m


def active_terms(config: ml_collections.ConfigDict) -> list[str]:
  return [k for k in losses.TERMS if config.loss[k] > 0]


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Balancing runs: `loss.balance` is on and at least two terms compete."""
  return method(config) != "none" and len(active_terms(config)) > 1


def every_steps(config: ml_collections.ConfigDict) -> int:
  n = int(config.loss.balance_every_steps)
  if n < 1:
    raise ValueError(f"loss.balance_every_steps must be >= 1, got {n}")
  return n


def init_state(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The EMA of log G_t per active term (0: multipliers 1) and the update count."""
  state = {f"log_gnorm/{k}": jnp.zeros((), jnp.float32) for k in active_terms(config)}
  state["updates"] = jnp.zeros((), jnp.int32)
  return state


def multipliers(state: dict[str, jax.Array], config: ml_collections.ConfigDict
                ) -> dict[str, jax.Array]:
  """lambda_t of every active term from the state (pure; traced inside the step)."""
  terms = active_terms(config)
  log_g = jnp.stack([state[f"log_gnorm/{k}"] for k in terms])
  cap = jnp.log(jnp.float32(config.loss.balance_max))
  log_lam = jnp.clip(jnp.mean(log_g) - log_g, -cap, cap)
  return {k: jnp.exp(log_lam[i]) for i, k in enumerate(terms)}


def update(state: dict[str, jax.Array], grad_norms: dict[str, jax.Array],
           config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The state after one measurement.

  Args:
    state: `init_state` or a previous `update`.
    grad_norms: {term: G_t}, the unweighted gradient norms (a term whose G_t is 0 or not
      finite, e.g. no report in the batch, keeps its average).
    config: full config (`loss.balance_decay`: the EMA decay; the first measurement is
      taken as it is).

  Returns:
    The new state.
  """
  decay = jnp.float32(config.loss.balance_decay)
  first = state["updates"] == 0
  out = {"updates": state["updates"] + 1}
  for k in active_terms(config):
    g = jnp.asarray(grad_norms[k], jnp.float32)
    ok = jnp.isfinite(g) & (g > 0)
    new = jnp.log(jnp.where(ok, g, 1.0))
    old = state[f"log_gnorm/{k}"]
    ema = jnp.where(first, new, decay * old + (1.0 - decay) * new)
    out[f"log_gnorm/{k}"] = jnp.where(ok, ema, old)
  return out


def metrics(state: dict[str, jax.Array], config: ml_collections.ConfigDict
            ) -> dict[str, jax.Array]:
  """`balance/weight/<t>`: each term's multiplier, for the logs."""
  return {f"balance/weight/{k}": v for k, v in multipliers(state, config).items()}
