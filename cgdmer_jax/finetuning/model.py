"""The fine-tuned network: the pretrained ECG encoder, a linear head, and how each weight learns.

The encoder is `CGDMER.encode_ecg` of the pretraining model built without its report tower and
decoders (every loss weight 0: the model then builds only the ECG backbone, the shared and ECG
specific encoders and the zero-shot projection), its weights taken by name from the pretrained
(or, for the baseline, randomly initialised full) model. The head is one linear layer from the
pooled `shared` features (or `concat` = shared and specific) to the task's classes, trained
with sigmoid binary cross-entropy over the real rows of a batch.

Parameters are a plain nested dict `{"encoder": ..., "head": {"kernel", "bias"}}`, so jit,
optax and Orbax see a plain pytree; `nnx.merge` rebuilds the module inside the step.

How each weight learns is one scale per parameter (`param_scales`), multiplied into the AdamW
update (weight decay included, as BEiT's per-group learning rate does):
  * head, the backbone's final LayerNorm, the shared / specific encoders: 1;
  * backbone block i of depth d: layer_decay^(d - i) (a scanned stack holds its blocks on a
    leading layer axis, so its scale is a vector along that axis);
  * patch embedding (patch norms, projection, amplitude statistics) and lead embedding:
    layer_decay^(d + 1);
  * 0 (frozen: gradient and update zeroed) for the patch embedding and blocks 0..N-1 under
    `freeze_blocks=N`, and for what the head never reads: the zero-shot projection and, with
    `features=shared`, the specific encoder (otherwise weight decay alone would move them).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx

from cgdmer_jax import inference
from cgdmer_jax import objective
from cgdmer_jax.data import features as features_lib
from cgdmer_jax.finetuning import config as config_lib
from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import optim
from cgdmer_jax.train import workdir_config
from data_pipelines import tfrecord

Params = dict[str, Any]
# MAE's fine-tuning head init: near zero, so the first updates move the head, not the encoder.
HEAD_INIT_STD = 2e-5
PREVALENCE_CLIP = 1e-3  # a class without positives (or negatives) starts at log-odds -+6.9
_LOSS_TERMS = ("ecg", "text", "contrastive", "disentangle")


@dataclasses.dataclass
class Source:
  """A model to fine-tune: its config and the full model's parameters (a pure dict)."""
  name: str
  config: ml_collections.ConfigDict
  params: dict
  origin: dict  # how it was obtained: kind ('workdir' | 'export' | 'random_init'), path, step


def encoder_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every loss weight 0: the model it builds is the ECG encoder alone."""
  out = ml_collections.ConfigDict(config.to_dict())
  with out.unlocked():
    for term in _LOSS_TERMS:
      out.loss[term] = 0.0
  return out


def load_source(path: str | os.PathLike, step: str | int | None) -> Source:
  """The pretrained weights of a training workdir (at `step`) or an export folder.

  Args:
    path: a training workdir (config.json + checkpoints/) or an export (config.json +
      params/ + export_info.json).
    step: 'latest', a step number or 'best' (training workdirs only).

  Returns:
    The `Source`: the run's config (an export's attention reset to 'auto', the export's
    being 'xla' for platform-independent HLO) and the full model's float32 parameters.

  Raises:
    FileNotFoundError: neither a workdir nor an export.
    ValueError: a step other than 'latest' for an export.
  """
  path = epath.Path(path)
  is_export = (path / inference.EXPORT_INFO).is_file()
  if not (path / workdir_config.CONFIG_FILE).is_file():
    raise FileNotFoundError(f"{path} is neither a training workdir nor an export folder (no "
                            f"{workdir_config.CONFIG_FILE})")
  if is_export and step not in (None, "latest"):
    raise ValueError(f"{path} is an export (one fixed checkpoint): --step={step} applies to "
                     "training workdirs only")
  config = workdir_config.read(path / workdir_config.CONFIG_FILE)
  if is_export:
    with config.unlocked():
      config.model.attention = "auto"
  _, abstract = objective.abstract_init(config)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = path if is_export else inference.checkpoint_target(path, step)
  params = checkpointing.restore_params(target, abstract, jax.tree.map(lambda _: device,
                                                                        abstract))
  return Source(name=path.name, config=config, params=nnx.to_pure_dict(params),
                origin={"kind": "export" if is_export else "workdir", "path": _absolute(path),
                        "step": "latest" if step is None else str(step)})


def _absolute(path: epath.Path) -> str:
  text = os.fspath(path)
  return text if tfrecord.is_object_storage(text) else os.path.abspath(text)


def random_source(of: Source, seed: int) -> Source:
  """`of`'s architecture with random weights, as `evaluate --random_init` builds it."""
  _, params = objective.init(of.config, seed)
  return Source(name=f"random_init(seed={seed})", config=of.config,
                params=nnx.to_pure_dict(params),
                origin={"kind": "random_init", "seed": seed, "architecture_of": of.origin})


def _take(template: dict, full: dict, where: str = "") -> dict:
  """`full`'s entries at `template`'s keys, recursively."""
  out = {}
  for key, sub in template.items():
    if key not in full:
      raise ValueError(f"the pretrained parameters lack {where}{key}")
    out[key] = _take(sub, full[key], f"{where}{key}/") if isinstance(sub, dict) else full[key]
  return out


@dataclasses.dataclass
class Network:
  """The encoder's structure and what the head reads."""
  graphdef: nnx.GraphDef
  feature: str
  depth: int
  feature_dim: int
  num_samples: int


def build(source: Source, feature: str, prevalence: np.ndarray, seed: int
          ) -> tuple[Network, Params]:
  """The network and its initial parameters (pretrained encoder, near-zero head).

  The head's bias starts at each class's log-odds among the training rows: the first
  gradients then carry which records are positive, not the base rate (which, through the
  pooled features' large common component, Adam would otherwise spend its first steps on).

  Args:
    source: the model's config and full parameters.
    feature: 'shared' or 'concat'.
    prevalence: [C] share of positives of each class among the training rows.
    seed: head init.

  Returns:
    (network, params) with params `{"encoder": pure dict, "head": {kernel [D, C], bias [C]}}`
    as float32 numpy/jax arrays on the host.
  """
  if feature not in config_lib.FEATURES:
    raise ValueError(f"unknown features {feature!r}; known: {config_lib.FEATURES}")
  config = encoder_config(source.config)
  graphdef, abstract = objective.abstract_init(config)
  encoder = jax.tree.map(lambda x: np.asarray(x, np.float32),
                         _take(nnx.to_pure_dict(abstract), source.params))
  T = int(round(config.data.fs * config.data.seconds))
  net = Network(graphdef, feature, int(config.model.ecg_depth), 0, T)
  out = jax.eval_shape(lambda p: _features(net, p, jnp.zeros((1, features_lib.NUM_LEADS, T)),
                                           jnp.full((1,), T, jnp.int32),
                                           jnp.ones((1, features_lib.NUM_LEADS), bool)), encoder)
  net.feature_dim = int(out.shape[-1])
  rng = np.random.default_rng(seed)
  p = np.clip(np.asarray(prevalence, np.float64), PREVALENCE_CLIP, 1 - PREVALENCE_CLIP)
  head = {"kernel": (HEAD_INIT_STD * rng.standard_normal((net.feature_dim, len(p)))
                     ).astype(np.float32), "bias": np.log(p / (1 - p)).astype(np.float32)}
  return net, {"encoder": encoder, "head": head}


def _features(net: Network, encoder: dict, ecg_BxCxT, valid_len_B, lead_mask_BxC) -> jax.Array:
  out = nnx.merge(net.graphdef, encoder).encode_ecg(ecg_BxCxT, valid_len_B, lead_mask_BxC)
  if net.feature == "shared":
    return out["shared"]
  return jnp.concatenate([out["shared"], out["specific"]], axis=-1)


def logits(net: Network, params: Params, batch: dict) -> jax.Array:
  """[B, C] class logits of a batch (`ecg` int16 µV [B, 12, T], `valid_len`, `lead_mask`)."""
  ecg = batch["ecg"].astype(jnp.float32) / features_lib.UNITS_PER_MV
  x_BxD = _features(net, params["encoder"], ecg, batch["valid_len"], batch["lead_mask"])
  return x_BxD @ params["head"]["kernel"] + params["head"]["bias"]


def loss(net: Network, params: Params, batch: dict) -> jax.Array:
  """Sigmoid BCE, mean over classes, mean over the rows of weight 1 (padding has weight 0)."""
  per_B = optax.sigmoid_binary_cross_entropy(logits(net, params, batch), batch["y"]).mean(-1)
  w_B = batch["weight"]
  return jnp.sum(per_B * w_B) / jnp.maximum(jnp.sum(w_B), 1.0)


def param_scales(params: Params, depth: int, layer_decay: float, freeze_blocks: int,
                 feature: str) -> Any:
  """The update scale of every parameter (module docstring), a pytree like `params`.

  Args:
    params: the network's parameters (or their shapes).
    depth: backbone blocks.
    layer_decay: BEiT's decay per block.
    freeze_blocks: patch embedding and the first N blocks get 0.
    feature: 'shared' freezes the (unread) specific encoder.

  Returns:
    float32 numpy arrays: scalars, or [depth, 1, ...] along a scanned stack's layer axis.
  """
  if not 0 <= freeze_blocks <= depth:
    raise ValueError(f"--freeze_blocks must be in 0..{depth} (the backbone's depth), got "
                     f"{freeze_blocks}")
  block = np.asarray([layer_decay ** (depth - i) * (i >= freeze_blocks) for i in range(depth)],
                     np.float32)
  embed = np.float32(layer_decay ** (depth + 1) * (freeze_blocks == 0))

  def scale(path, leaf):
    names = optim.path_names(path)
    if names[0] == "head":
      return np.float32(1)
    part = names[1:]
    if part[0] == "ecg_proj":
      return np.float32(0)
    if part[0] == "disentangle":
      return np.float32(0 if part[1] == "ecg_specific" and feature == "shared" else 1)
    if part[0] != "ecg":
      raise ValueError(f"no learning-rate rule for parameter {'/'.join(names)}")
    if part[1] != "backbone":
      return embed
    if part[2] != "blocks":
      return np.float32(1)  # the backbone's final LayerNorm
    if part[3].isdigit():  # an unrolled stack: one module per block
      return block[int(part[3])]
    return block.reshape((depth,) + (1,) * (len(np.shape(leaf)) - 1))
  return jax.tree_util.tree_map_with_path(scale, params)


def _multiply(factors: Any) -> optax.GradientTransformation:
  """Multiplies each update by its constant factor (stateless)."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u * f, updates, factors), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer(config: config_lib.FinetuneConfig, scales: Any, steps_per_epoch: int
              ) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay to 0 over `config.epochs`, per-parameter scales.

  Frozen parameters (scale 0) get a zero gradient before AdamW (so their moments stay 0) and
  a zero update after it (so weight decay does not move them): they stay bit-identical.
  """
  total = config.epochs * steps_per_epoch
  warmup = min(total, int(round(config.warmup_epochs * steps_per_epoch)))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
      decay_steps=max(total, warmup + 1), end_value=0.0)
  trainable = jax.tree.map(lambda s: (np.asarray(s) > 0).astype(np.float32), scales)
  return optax.chain(_multiply(trainable),
                     optax.adamw(schedule, weight_decay=config.weight_decay,
                                 mask=optim.decay_mask),
                     _multiply(scales))


def steps(net: Network, tx: optax.GradientTransformation) -> tuple[Callable, Callable]:
  """The pure steps, to be jitted: train `(params, opt_state, batch) -> (params, opt_state,
  loss)` and score `(params, batch) -> logits [B, C]`."""
  def train_step(params, opt_state, batch):
    value, grads = jax.value_and_grad(lambda p: loss(net, p, batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  def score_step(params, batch):
    return logits(net, params, batch)
  return train_step, score_step
