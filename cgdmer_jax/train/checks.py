"""Validation of a pretraining config, so bad values fail with a clear message before compiling."""

from __future__ import annotations

import json
import os

import ml_collections
from etils import epath

from cgdmer_jax import losses
from cgdmer_jax import siglip
from cgdmer_jax.models import bert_tower
from cgdmer_jax.models import cgdmer
from cgdmer_jax.models import layers
from cgdmer_jax.models import normalize
from cgdmer_jax.train import accumulate
from cgdmer_jax.train import workdir_config
from data_pipelines import tfrecord
from data_pipelines.sources import base as source_base

# The tables of accepted values belong to the modules that use them.
NORMALIZE = normalize.METHODS
DTYPES = tuple(layers.DTYPES)
PROBE = cgdmer.PROBE_FEATURES
HEADS_SHARED = cgdmer.HEADS_SHARED
DISENTANGLE_ESTIMATORS = losses.DISENTANGLE_ESTIMATORS


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def check(config: ml_collections.ConfigDict, *, need_data: bool = True) -> None:
  """Raises ConfigError on the first impossible or inconsistent value.

  Args:
    config: a pretraining config (configs/pretrain.py).
    need_data: whether `data.dir` must be set (False for synthetic benchmarks).
  """
  d, m, k, o = config.data, config.model, config.mask, config.optim
  if need_data:
    _require(bool(d.dir), "config.data.dir is not set: pass --config.data.dir=DIR, the output "
             "folder of `python -m data_pipelines.build`")
  _require(d.fs > 0, f"config.data.fs must be positive, got {d.fs}")
  _require(d.seconds > 0, f"config.data.seconds must be positive, got {d.seconds}")
  num_samples = d.fs * d.seconds
  _require(abs(num_samples - round(num_samples)) < 1e-6,
           f"config.data.fs * seconds = {num_samples} is not a whole number of samples")
  _require(m.patch_size > 0 and round(num_samples) % m.patch_size == 0,
           f"config.model.patch_size={m.patch_size} does not divide the "
           f"{round(num_samples)} samples per lead (fs={d.fs}, seconds={d.seconds})")
  _require(d.batch_size > 0, f"config.data.batch_size must be positive, got {d.batch_size}")
  _require(d.normalize in NORMALIZE,
           f"config.data.normalize={d.normalize!r}; choose one of {NORMALIZE}")
  _require(m.dtype in DTYPES, f"config.model.dtype={m.dtype!r}; choose one of {DTYPES}")
  _require(m.probe_features in PROBE,
           f"config.model.probe_features={m.probe_features!r}; choose one of {PROBE}")
  for name in ("ecg", "text"):
    _require(m[f"{name}_width"] % m[f"{name}_heads"] == 0,
             f"config.model.{name}_width={m[f'{name}_width']} is not divisible by "
             f"{name}_heads={m[f'{name}_heads']}")
  _require(m.dec_width % m.dec_heads == 0,
           f"config.model.dec_width={m.dec_width} is not divisible by dec_heads={m.dec_heads}")
  for name in ("lead_ratio", "time_ratio", "token_ratio", "text_ratio"):
    _require(0.0 <= k[name] < 1.0, f"config.mask.{name}={k[name]} must be in [0, 1)")
  _require(config.loss.disentangle_estimator in DISENTANGLE_ESTIMATORS,
           f"config.loss.disentangle_estimator={config.loss.disentangle_estimator!r}; "
           f"choose one of {DISENTANGLE_ESTIMATORS}")
  _require(m.heads_shared in HEADS_SHARED,
           f"config.model.heads_shared={m.heads_shared!r}; choose one of {HEADS_SHARED}")
  for name in ("ecg", "text", "contrastive", "disentangle"):
    _require(config.loss[name] >= 0, f"config.loss.{name}={config.loss[name]} must be >= 0")
  for table in ("ramp_start", "ramp_steps"):
    for name, v in config.loss[table].items():
      _require(name in ("ecg", "text", "contrastive", "disentangle"),
               f"config.loss.{table}.{name}: no such loss term")
      _require(int(v) >= 0, f"config.loss.{table}.{name}={v} must be >= 0")
  _require(sum(config.loss[n] for n in ("ecg", "text", "contrastive", "disentangle")) > 0,
           "all loss weights are 0: nothing to train")
  _require(not (config.loss.ecg > 0 and not k.ecg),
           "config.loss.ecg > 0 needs config.mask.ecg=True (nothing to reconstruct otherwise)")
  _require(not (config.loss.text > 0 and not k.text),
           "config.loss.text > 0 needs config.mask.text=True (nothing to reconstruct otherwise)")
  _require(o.lr > 0, f"config.optim.lr must be positive, got {o.lr}")
  _require(o.warmup_steps >= 0, f"config.optim.warmup_steps must be >= 0, got {o.warmup_steps}")
  _require(o.grad_accum_steps >= 1 and m.batch_chunks >= 1,
           f"config.optim.grad_accum_steps={o.grad_accum_steps} and config.model.batch_chunks="
           f"{m.batch_chunks} must be >= 1")
  for batch in (d.batch_size, d.eval_batch_size):
    try:
      accumulate.check_batch_size(config, batch)
    except ValueError as e:
      raise ConfigError(f"config: {e}") from None
  _require(d.eval_batch_size > 0,
           f"config.data.eval_batch_size must be positive, got {d.eval_batch_size}")
  _require(config.loss.siglip_impl in siglip.IMPLS,
           f"config.loss.siglip_impl={config.loss.siglip_impl!r}; choose one of "
           f"{siglip.IMPLS}")
  _require(config.total_steps > 0, f"config.total_steps must be positive, got {config.total_steps}")
  _require(d.on_corrupt in ("error", "skip"),
           f"config.data.on_corrupt={d.on_corrupt!r}; choose 'error' or 'skip'")
  _require(not (d.on_corrupt == "skip" and d.dir and tfrecord.is_object_storage(str(d.dir))),
           f"config.data.on_corrupt='skip' reads shards record by record from local files; "
           f"{d.dir} is on object storage: copy the dataset to a local disk, or keep 'error' "
           "(rebuild a damaged shard with data_pipelines.build)")
  _require(config.checkpoint.every_steps > 0,
           f"config.checkpoint.every_steps must be positive, got {config.checkpoint.every_steps}")
  _require(config.checkpoint.keep is None or config.checkpoint.keep >= 1,
           f"config.checkpoint.keep must be >= 1, got {config.checkpoint.keep}")
  best = config.best
  if best.zero_shot_task:  # the task's name is checked by the scorer's factory (evaluators/)
    _require(bool(best.data_root), "config.best.zero_shot_task needs config.best.data_root (the "
             "folder holding the task's records, label tables and merl_zeroshot/)")
    try:  # found at the start, not at the first evaluation hours later
      source_base.require_local(best.data_root, "config.best.data_root")
    except source_base.LayoutError as e:
      raise ConfigError(str(e)) from None
    _require(config.loss.contrastive > 0, "config.best.zero_shot_task needs the contrastive "
             "term (config.loss.contrastive > 0)")
    _require(config.eval_every_steps > 0, "config.best.zero_shot_task needs "
             "config.eval_every_steps > 0")
  _require(config.mesh.data == -1 or config.mesh.data >= 1, "config.mesh.data must be >= 1 or -1")
  _require(config.mesh.fsdp == -1 or config.mesh.fsdp >= 1, "config.mesh.fsdp must be >= 1 or -1")


def check_devices(config: ml_collections.ConfigDict, num_devices: int,
                  num_processes: int) -> None:
  """The global batches must split evenly over the mesh's devices and over the processes.

  `data.eval_batch_size` is checked too (when the run evaluates): a bad value would otherwise
  train until the first evaluation and fail there, on every resume again.

  Args:
    config: full config.
    num_devices: devices of the mesh.
    num_processes: processes of the job.

  Raises:
    ConfigError: naming the field and the counts.
  """
  fields = ["batch_size"]
  if config.eval_every_steps:
    fields.append("eval_batch_size")
  for field in fields:
    value = config.data[field]
    for count, what in ((num_devices, "devices of the mesh"), (num_processes, "processes")):
      _require(value % count == 0,
               f"config.data.{field}={value} is not divisible by the {count} {what}: pass a "
               f"multiple of {count}")


def check_reports(config: ml_collections.ConfigDict, vocab_size: int, data_dir: str) -> None:
  """A dataset without reports (no tokenizer, vocab 0) only trains variants without text.

  Raises:
    ConfigError: naming the variants that work without reports.
  """
  if vocab_size > 0 or not cgdmer.branches(config)["text"]:
    return
  ok = cgdmer.variants_without_reports()
  raise ConfigError(
      f"the dataset at {data_dir} has no reports (vocab_size 0, e.g. CinC, CPSC2018, CSN), but "
      f"variant {config.variant!r} (loss.contrastive={config.loss.contrastive}, "
      f"loss.text={config.loss.text}) needs them; variants that train without reports: "
      + ", ".join(f"--config=configs/pretrain.py:variant={v}" for v in ok))


# Model settings that change how the step runs, not which parameters exist: free to change
# when a run resumes.
RUNTIME_MODEL_KEYS = ("dtype", "attention", "remat", "batch_chunks", "probe_features")


def check_resume(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """A workdir that holds checkpoints must be resumed with its own model settings.

  Compares `config.model`, `data.normalize` and the loss terms that build branches with the
  run's `config.json` before it is overwritten, so a changed setting (or a default that changed
  since the run started) is named here instead of surfacing as an Orbax tree mismatch.

  Raises:
    ConfigError: naming each differing setting and the override that restores it.
  """
  workdir = epath.Path(workdir)
  ckpts = workdir / "checkpoints"
  saved_path = workdir_config.path_of(workdir)
  if not saved_path.is_file() or not ckpts.is_dir() or not any(
      p.name.isdigit() for p in ckpts.iterdir()):
    return
  saved = workdir_config.read_json(saved_path)  # keys newer than the run: as it was built
  absent = object()
  diffs = []
  for key, now in config.model.items():
    if key in RUNTIME_MODEL_KEYS:
      continue
    was = saved.get("model", {}).get(key, absent)
    if isinstance(now, ml_collections.ConfigDict):  # a subtree (model.text) vs its JSON
      now = json.loads(now.to_json_best_effort())
    if key == "text" and was == workdir_config.LEGACY_TEXT and not bert_tower.is_bert(
        config.model):
      continue  # a run from before model.text: the from-scratch transformer, as now
    if was is absent or was != now:
      diffs.append((f"model.{key}", was, now))
  # The input scaling the weights were trained on (the default changed from 'zscore').
  was = saved.get("data", {}).get("normalize", absent)
  if was is not absent and was != config.data.normalize:
    diffs.append(("data.normalize", was, config.data.normalize))
  for key in ("ecg", "text", "contrastive", "disentangle"):
    was = saved.get("loss", {}).get(key, absent)
    if was is absent or (was > 0) != (config.loss[key] > 0):
      diffs.append((f"loss.{key}", was, config.loss[key]))
  if diffs:
    lines = [f"  {k}: the run has {'(absent: it predates the setting)' if w is absent else repr(w)}"
             f", this config {n!r}" for k, w, n in diffs]
    fixes = " ".join(f"--config.{k}={w}" for k, w, _ in diffs if w is not absent)
    raise ConfigError(
        f"{workdir} holds checkpoints of a run with other model settings:\n" + "\n".join(lines)
        + "\nResume with the run's settings" + (f" ({fixes})" if fixes else "")
        + ", or start a new --workdir.")
