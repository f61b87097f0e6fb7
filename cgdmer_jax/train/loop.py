"""The pretraining loop: mesh, input, model, sharding, jitted step, checkpoints, evals.

Sections read top to bottom as in big_vision's train.py. The step is a pure function
`(state, batch) -> (state, metrics)` jitted once over the mesh with explicit shardings and the
state donated. The step's RNG is `fold_in(seed, step)` and the input stream is a pure function
of (seed, step), so a resumed run continues exactly where the interrupted one was.

The input modules (`cgdmer_jax.data.*`) are imported inside the functions that read data:
they import TensorFlow, which the step benchmark and the GPU check (built on `setup`) run
without.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from cgdmer_jax import losses
from cgdmer_jax import objective
from cgdmer_jax.train import accumulate
from cgdmer_jax.train import balance
from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import checks
from cgdmer_jax.train import diagnostics
from cgdmer_jax.train import metrics as metrics_lib
from cgdmer_jax.train import optim
from cgdmer_jax.train import prefetch
from cgdmer_jax.train import pretrained_text
from cgdmer_jax.train import sharding
from cgdmer_jax.train import val_loss
from cgdmer_jax.train import workdir_config
from cgdmer_jax.train import workdir_lock


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the run stops, keeping the last good checkpoint."""


class Scorer(Protocol):
  """Model selection at each eval (`config.best`): params -> a score, higher is better."""
  metric: str        # what the score is, for logs
  num_records: int   # records scored
  num_listed: int    # records the task lists

  def __call__(self, params) -> float: ...


# (config, graphdef, tokenizer path) -> Scorer. Built by the entry point
# (`evaluators.val_zero_shot.scorer_factory`): the trainer does not import evaluation code.
ScorerFactory = Callable[[ml_collections.ConfigDict, Any, "str | None"], Scorer]


# ---------------------------------------------------------------------------------------------
# Data: dataset facts into the config, and the input streams.


def apply_dataset_info(config: ml_collections.ConfigDict, info) -> None:
  """Checks the converted dataset against the config and copies its vocabulary facts in.

  A pretrained report tower (`model.text.init_from`) is resolved first, and a dataset built
  with another tokenizer than the tower's is refused here, before anything compiles.
  """
  try:
    pretrained_text.resolve(config)
  except (OSError, ValueError) as e:
    raise checks.ConfigError(f"model.text.init_from: {e}") from e
  if info.fs != config.data.fs:
    raise checks.ConfigError(
        f"the dataset at {config.data.dir} is at {info.fs} Hz but config.data.fs="
        f"{config.data.fs}: pass --config.data.fs={info.fs} or rebuild the data")
  want = int(round(config.data.fs * config.data.seconds))
  if info.num_samples != want:
    raise checks.ConfigError(
        f"the dataset holds {info.num_samples} samples per lead but config.data.fs * seconds "
        f"= {want}: pass --config.data.seconds={info.num_samples / info.fs:g}")
  checks.check_reports(config, int(info.vocab_size), str(config.data.dir))
  if config.data.mix:
    from cgdmer_jax.data import mixture
    try:
      logging.info("training mixture: %s", mixture.check_config(config, info))
    except (ValueError, FileNotFoundError) as e:
      raise checks.ConfigError(f"config.data.mix: {e}") from e
  with config.unlocked():
    config.model.vocab_size = int(info.vocab_size)
    config.model.max_report_len = int(info.max_report_len)
    # Text masking follows the dataset's tokenizer (SentencePiece's 0..4 or a checkpoint's).
    if info.build_info.get("special_ids"):
      config.model.special_ids = dict(info.build_info["special_ids"])
      config.model.normal_ids_start = int(info.build_info.get(
          "normal_ids_start", max(info.build_info["special_ids"].values()) + 1))
  try:
    pretrained_text.check_dataset(config, info.build_info, config.data.dir)
  except ValueError as e:
    raise checks.ConfigError(str(e)) from e


def train_stream(config, start_step: int, damage_log=None) -> Iterator[dict[str, np.ndarray]]:
  from cgdmer_jax.data import mixture
  from cgdmer_jax.data import reader
  if config.data.mix:
    return mixture.train_batches(
        mixture.sources_of(config), split=config.data.train_split,
        global_batch_size=config.data.batch_size, seed=config.seed, start_step=start_step,
        shuffle_buffer=config.data.shuffle_buffer,
        on_corrupt=config.data.on_corrupt, damage_log=damage_log)
  return reader.train_batches(
      config.data.dir, split=config.data.train_split, global_batch_size=config.data.batch_size,
      seed=config.seed, start_step=start_step, shuffle_buffer=config.data.shuffle_buffer,
      on_corrupt=config.data.on_corrupt, damage_log=damage_log)


# ---------------------------------------------------------------------------------------------
# The step.


def make_train_step(graphdef, config, tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable:
  """The pure step `(state, batch) -> (state, metrics)`; state = {step, params, opt_state}
  (and `balance`, the terms' gradient-norm averages, with `loss.balance` on).

  Loss and gradients come from `accumulate.make_loss_and_grads_fn` (the whole batch at once, or
  exactly accumulated over `model.batch_chunks * optim.grad_accum_steps` chunks).
  """
  loss_and_grads = accumulate.make_loss_and_grads_fn(graphdef, config)
  base_key = jax.random.key(config.seed)

  def train_step(state, batch):
    rng = jax.random.fold_in(base_key, state["step"])
    mult = balance.multipliers(state["balance"], config) if "balance" in state else None
    (loss, mets), grads = loss_and_grads(state["params"], batch, rng, state["step"], mult)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    mets = dict(mets)
    mets["loss"] = loss
    if mult is not None:  # `loss` stays comparable over steps: the terms at their set weights
      mets["loss/objective"] = loss
      mets["loss"] = sum(w * mets[f"loss/{k}"] for k, w in
                         losses.term_scales(config, state["step"]).items() if f"loss/{k}" in mets)
    mets["grad_norm"] = optax.tree.norm(grads)
    mets["lr"] = schedule(state["step"])
    for k, v in losses.term_scales(config, state["step"], mult).items():
      if not isinstance(v, float):  # a term on a ramp-in schedule or balanced: its weight
        mets[f"weight/{k}"] = v
    return dict(state, step=state["step"] + 1, params=params, opt_state=opt_state), mets

  return train_step


# ---------------------------------------------------------------------------------------------
# Setup shared by training, benchmarks and tests.


@dataclasses.dataclass
class Setup:
  mesh: jax.sharding.Mesh
  graphdef: Any
  abstract_state: dict[str, Any]
  state_shardings: dict[str, Any]
  init_state: Callable[[], dict[str, Any]]
  train_step: Callable  # jitted, donates the state
  tx: optax.GradientTransformation
  schedule: optax.Schedule


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
  """Builds the model, optimizer, shardings and the jitted step on `mesh` (nothing runs)."""
  checks.check_devices(config, mesh.size, jax.process_count())
  tx, schedule = optim.make_optimizer(config)
  graphdef, abstract_params = objective.abstract_init(config)

  def init_params():
    return objective.init(config, config.seed)[1]

  abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                    "opt_state": jax.eval_shape(tx.init, abstract_params)}
  if balance.enabled(config):
    abstract_state["balance"] = jax.eval_shape(lambda: balance.init_state(config))
  shardings = sharding.state_shardings(abstract_state, mesh)
  shardings["step"] = sharding.replicated(mesh)
  if "balance" in abstract_state:
    shardings["balance"] = jax.tree.map(lambda _: sharding.replicated(mesh),
                                        abstract_state["balance"])

  @functools.partial(jax.jit, out_shardings=shardings)
  def init_state():
    params = init_params()
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    return dict(state, balance=balance.init_state(config)) if balance.enabled(config) else state

  batch_sh = sharding.batch_sharding(mesh)
  step = jax.jit(make_train_step(graphdef, config, tx, schedule),
                 in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                 donate_argnums=(0,))
  return Setup(mesh, graphdef, abstract_state, shardings, init_state, step, tx, schedule)


# ---------------------------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       make_scorer: ScorerFactory | None = None) -> dict[str, float]:
  """Pretrains per `config`, checkpointing to `workdir`; resumes whatever is there.

  Args:
    config: a pretraining config (configs/pretrain.py).
    workdir: checkpoints, metrics and the resolved config go here.
    make_scorer: builds the model-selection scorer that `config.best` asks for
      (`evaluators.val_zero_shot.scorer_factory(config)`); required when
      `config.best.zero_shot_task` is set.

  Returns:
    The last logged metrics (process-local floats) and `step`, the step the run stopped at
    (below `config.total_steps` when it stopped for a resubmission).
  """
  from cgdmer_jax.data import reader
  workdir = epath.Path(workdir)
  checks.check(config)
  if config.best.zero_shot_task and make_scorer is None:
    raise checks.ConfigError(
        f"config.best.zero_shot_task={config.best.zero_shot_task!r} needs a scorer: run "
        "`python -m cgdmer_jax.main`, or pass make_scorer=val_zero_shot.scorer_factory(config)")
  info = reader.load_info(config.data.dir)
  apply_dataset_info(config, info)
  checks.check_resume(config, workdir)
  with workdir_lock.hold(workdir):  # one trainer per workdir, from here to the end
    return _train_locked(config, workdir, info, make_scorer)


def _train_locked(config: ml_collections.ConfigDict, workdir: epath.Path, info,
                  make_scorer: ScorerFactory | None) -> dict[str, float]:
  from cgdmer_jax.data import shard_scan
  workdir_config.write(config, workdir)

  mesh = sharding.make_mesh(config)
  s = setup(config, mesh)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints",
                                    every_steps=config.checkpoint.every_steps,
                                    keep=config.checkpoint.keep)
  resumed = checkpointing.initial_state(ckpt, config, s.abstract_state, s.state_shardings,
                                        s.init_state)
  state = resumed.state
  if "balance" in s.abstract_state and "balance" not in state:  # saved without loss.balance
    logging.warning("the checkpoint has no loss.balance state: the balancer starts afresh")
    state["balance"] = jax.device_put(balance.init_state(config), s.state_shardings["balance"])
  if resumed.source == "scratch" and config.model.text.init_from:
    state["params"] = pretrained_text.load_pretrained(state["params"], config)
    logging.info("report tower initialised from %s", config.model.text.init_from)
  state["step"] = jax.device_put(jnp.asarray(resumed.step, jnp.int32), s.state_shardings["step"])
  step = resumed.step
  logging.info("starting at step %d (%s); mesh %s; %d devices, %d processes", step,
               resumed.source, dict(mesh.shape), mesh.size, jax.process_count())

  eval_step = jax.jit(val_loss.make_eval_step(s.graphdef, config))
  diag_every = int(config.diagnostics.every_steps)
  bal_every = balance.every_steps(config) if "balance" in state else 0
  diag_fn = (jax.jit(diagnostics.term_gradients_fn(s.graphdef, config))
             if diag_every or bal_every else None)
  bal_update = jax.jit(functools.partial(balance.update, config=config),
                       out_shardings=s.state_shardings.get("balance"))
  diag_key = jax.random.key(config.seed)  # the train step's own key: fold_in(key, step)
  scorer = keeper = None
  if config.best.zero_shot_task:
    scorer = make_scorer(config, s.graphdef, info.tokenizer_path)
    keeper = checkpointing.BestKeeper(workdir, scorer.metric)
    logging.info("model selection on %s: %d of %d records", scorer.metric,
                 scorer.num_records, scorer.num_listed)
  writer = metrics_lib.MetricWriter(workdir)
  window = metrics_lib.WindowMean()
  progress = metrics_lib.Progress(step, config.total_steps)
  watcher = checkpointing.PreemptionWatcher()
  meta = {"config": "pretrain", "variant": config.variant, "seed": config.seed}
  last_logged: dict[str, float] = {}
  pending = None  # (step, device metrics) of the last dispatched step, fetched one step later
  last_good_step = ckpt.latest_step()
  damage_log = shard_scan.DamageLog() if config.data.on_corrupt == "skip" else None

  def flush() -> None:
    nonlocal pending
    if pending is None:
      return
    p_step, p_mets = pending
    pending = None
    fetched = val_loss.fetch(p_mets)
    if not math.isfinite(fetched["loss"]):
      raise NonFiniteLossError(
          f"loss is {fetched['loss']} at step {p_step} ({fetched}); the run stops here. The "
          f"last good checkpoint is step {last_good_step} in {ckpt.directory}")
    window.add(fetched)

  def save(at: int, force: bool) -> None:
    nonlocal last_good_step
    flush()  # never checkpoint a state whose loss was not checked
    if ckpt.save(at, state, dict(meta, step=at), force=force):
      last_good_step = at

  stop_at = config.total_steps
  if config.steps_per_run:
    stop_at = min(stop_at, step + config.steps_per_run)
  t_window, steps_window = time.perf_counter(), 0
  try:
    with jax.set_mesh(mesh):
      batches = prefetch.device_batches(train_stream(config, step, damage_log), mesh,
                                         config.data.prefetch)
      while step < stop_at:
        batch = next(batches)
        log_diag = diag_every and (step + 1) % diag_every == 0
        if log_diag or (bal_every and step % bal_every == 0):
          # The gradients this very step is about to take, term by term.
          mult = balance.multipliers(state["balance"], config) if bal_every else None
          diag = diag_fn(state["params"], batch, jax.random.fold_in(diag_key, step), step, mult)
          if bal_every and step % bal_every == 0:
            state["balance"] = bal_update(state["balance"], {
                k: diag[balance.GNORM_PREFIX + k] for k in balance.active_terms(config)})
          if log_diag:
            window.add_once(val_loss.fetch(diag))
        state, mets = s.train_step(state, batch)
        step += 1
        steps_window += 1
        flush()  # metrics of step-1: the device is already busy with this step
        pending = (step, mets)
        if step % config.log_every_steps == 0 or step == stop_at:
          flush()
          dt = time.perf_counter() - t_window
          last_logged = window.pop()
          last_logged["examples_per_s"] = steps_window * config.data.batch_size / dt
          last_logged["step_time_s"] = dt / steps_window
          if damage_log is not None:  # every process reads its own files: the sum
            last_logged["data/damaged_records"] = int(np.sum(
                multihost_utils.process_allgather(np.int32(damage_log.count))))
          writer.write(step, last_logged)
          progress.update(steps_window, loss=last_logged["loss"])
          t_window, steps_window = time.perf_counter(), 0
        if step % config.checkpoint.every_steps == 0 or step == stop_at:
          save(step, force=step == stop_at)
        if config.eval_every_steps and (step % config.eval_every_steps == 0
                                        or step == config.total_steps):
          val = val_loss.evaluate_loss(state["params"], eval_step, config, mesh,
                                         config.data.val_split)
          if scorer is not None:
            val["val/zero_shot_auc"] = scorer(state["params"])  # the key predates Scorer
            if keeper.update(step, val["val/zero_shot_auc"], state["params"]):
              logging.info("step %d: best %s so far (%.4f), saved to %s", step, keeper.metric,
                           keeper.best, keeper.dir)
          writer.write(step, val)
          last_logged.update(val)
          if jax.process_index() == 0:
            logging.info("%s", metrics_lib.val_line(step, val))
        if watcher.reached(step) and step < config.total_steps:
          save(step, force=True)
          logging.warning("preempted: checkpoint saved at step %d; exiting", step)
          break
      flush()
      logging.info("process %d/%d ends at step %d; params digest %s", jax.process_index(),
                   jax.process_count(), step, val_loss.params_digest(state["params"]))
  except shard_scan.DamagedShardError:  # (train or val input) keep every finished step
    if step > resumed.step and step != ckpt.latest_step():
      save(step, force=True)
    logging.error("damaged input after step %d; latest checkpoint: step %s in %s", step,
                  ckpt.latest_step(), ckpt.directory)
    raise
  finally:
    ckpt.wait()
    ckpt.close()
    if keeper is not None:
      keeper.close()
    watcher.close()
    progress.close()
    writer.close()
  last_logged = dict(last_logged, step=step)
  if jax.process_index() == 0:
    (workdir / "last_metrics.json").write_text(json.dumps(last_logged, indent=2))
  return last_logged
