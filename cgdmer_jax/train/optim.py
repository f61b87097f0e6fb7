"""The optax optimizer built from `config.optim`: AdamW, warmup + cosine, clipping, decay mask.

Weight decay applies to weight matrices only (parameters named `kernel` outside any
embedding); norms, biases, embeddings and the SigLIP temperature/bias are not decayed, as in
ViT/MAE practice. The rule is by name, not by rank, because scanned layer stacks add a leading
layer axis to every parameter.

`optim.siglip_lr_mult` multiplies the SigLIP temperature's and bias's learning rate. Adam
moves a parameter by about the learning rate per step, so at lr 1e-3 the two scalars can
move by at most a few units in a few thousand steps; the multiplier lets them move faster.
Measured at 10 on tiny: they still stay near their init, and nothing improved (docs/RECIPE.md).

Frozen parameters (`model.text.freeze_layers`, models/bert_tower.py) are routed by
`optax.multi_transform` to `set_to_zero`: no update, no weight decay, no Adam moments, and
they are left out of the clipping norm.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from cgdmer_jax.models import bert_tower


def path_names(path) -> list[str]:
  """The names along a pytree key path of the params (`jax.tree_util` keys), leaf name last."""
  names = []
  for entry in path:
    key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
    names.append(str(key))
  # nnx.Param leaves end in a `.value` attribute; the parameter's own name is before it.
  while names and names[-1] == "value":
    names.pop()
  return names


def decay_mask(params: Any) -> Any:
  """Pytree of bools: True where weight decay applies (kernels outside embeddings)."""
  def is_decayed(path, _):
    names = path_names(path)
    return bool(names) and names[-1] == "kernel" and not any("embed" in n for n in names)
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def siglip_mask(params: Any) -> Any:
  """Pytree of bools: True on the SigLIP temperature and bias (`siglip/*`)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: "siglip" in path_names(path), params)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to `optim.lr`, then cosine decay to 0 at `total_steps`."""
  warmup = max(0, min(config.optim.warmup_steps, config.total_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.optim.lr, warmup_steps=warmup,
      decay_steps=max(config.total_steps, warmup + 1), end_value=0.0)


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with global-norm clipping and the decay mask.

  Args:
    config: the full config (`optim.*`, `total_steps`).

  Returns:
    (optimizer, learning-rate schedule). Gradient accumulation is done in the train step
    (`accumulate.py`, chunks under `lax.scan`), not by wrapping the optimizer, so the
    optimizer state is the same whatever `optim.grad_accum_steps` is.
  """
  schedule = learning_rate_schedule(config)
  # The chain has the same structure with and without clipping, so a checkpoint restores
  # whatever clip_norm the resumed run uses.
  clip = (optax.clip_by_global_norm(config.optim.clip_norm)
          if config.optim.clip_norm and config.optim.clip_norm > 0 else optax.identity())
  chain = [clip]
  chain.append(optax.adamw(
      learning_rate=schedule, b1=config.optim.b1, b2=config.optim.b2,
      weight_decay=config.optim.weight_decay, mask=decay_mask))
  mult = float(config.optim.siglip_lr_mult)
  if mult <= 0:
    raise ValueError(f"optim.siglip_lr_mult must be > 0, got {mult}")
  if mult != 1.0:
    # Stateless, so the optimizer state (and any checkpoint of it) has the same leaves.
    chain.append(optax.masked(optax.scale(mult), siglip_mask))
  tx = optax.chain(*chain)
  if bert_tower.is_bert(config.model) and int(bert_tower.settings(config.model).freeze_layers):
    def labels(params):
      frozen = bert_tower.frozen_mask(params, config.model)
      return jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
