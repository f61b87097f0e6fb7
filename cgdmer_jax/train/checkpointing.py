"""Orbax checkpoints of the training state: interval and preemption saves, resume precedence.

A checkpoint is one step folder under `<workdir>/checkpoints/` holding three items:
`params` (the model parameters, an `nnx.State`), `opt_state` (optax state) and `meta` (JSON:
step, config name, variant). Params are a separate item so that `init_from` and the export
can read them without the optimizer state. Orbax writes each step to a temporary folder and
renames it when complete, so a killed run never leaves a checkpoint that looks whole.

Resume precedence (first that applies wins):
  1. the latest readable checkpoint in the workdir (a restarted or preempted run continues),
  2. `config.checkpoint.resume_from`: another run's checkpoint, full state and step,
  3. `config.checkpoint.init_from`: parameters only (from a checkpoint or an export); the
     optimizer and the step start fresh,
  4. scratch.

An unreadable workdir checkpoint (a file cut short by a dying node, a bad disk) is named in
a warning and moved to `<workdir>/checkpoints_unreadable/<step>` (kept for inspection, never
deleted; out of Orbax's way, so the run can write that step again), and the next older one is
tried; `config.checkpoint.strict_restore=True` raises `UnreadableCheckpointError` instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from typing import Any
from typing import Callable

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from data_pipelines import tfrecord

# The train state's items (`balance`: the loss balancer's averages, with `loss.balance` on).
STATE_ITEMS = ("params", "opt_state", "balance")
ITEMS = STATE_ITEMS + ("meta",)
UNREADABLE_DIR = "checkpoints_unreadable"


class UnreadableCheckpointError(RuntimeError):
  """A workdir checkpoint cannot be restored (strict_restore, or none is readable)."""


def _path(path: str | os.PathLike) -> epath.Path:
  """Orbax needs absolute paths: local paths are made absolute, URLs (gs://...) kept."""
  text = os.fspath(path)
  return epath.Path(text if tfrecord.is_object_storage(text) else os.path.abspath(text))


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for the training state."""

  def __init__(self, directory: str | os.PathLike, *, every_steps: int, keep: int,
               async_save: bool = True):
    self.directory = _path(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(every_steps)), max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: dict[str, Any], meta: dict[str, Any], *,
           force: bool = False) -> bool:
    """Saves `state` ({'params', 'opt_state'} and `balance` when present) at `step` if the
    interval says so (or force)."""
    items = {k: ocp.args.StandardSave(state[k]) for k in STATE_ITEMS if k in state}
    return self._manager.save(step, args=ocp.args.Composite(
        **items, meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state: dict[str, Any], shardings: dict[str, Any]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores ({'params', 'opt_state'[, 'balance']}, meta) at `step` onto `shardings`.

    A `balance` state the target asks for but the step does not hold (saved before
    `loss.balance` was switched on) is left out of the result; the caller starts it fresh.
    """
    present = {p.name for p in (self.directory / str(step)).iterdir()}
    names = [k for k in STATE_ITEMS if k in abstract_state and (k != "balance" or k in present)]
    out = self._manager.restore(step, args=ocp.args.Composite(
        **{k: ocp.args.StandardRestore(_abstract(abstract_state[k], shardings[k]))
           for k in names}, meta=ocp.args.JsonRestore()))
    return {k: out[k] for k in names}, dict(out["meta"])

  def set_aside(self, step: int) -> epath.Path:
    """Moves a step folder out of Orbax's way, keeping it (process 0 moves it).

    Args:
      step: the unreadable step.

    Returns:
      Where it went: `<workdir>/checkpoints_unreadable/<step>`. Every process then sees
      only the remaining steps.
    """
    target = self.directory.parent / UNREADABLE_DIR / str(step)
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      if target.exists():  # set aside before, under the same step: keep both
        target = target.with_name(f"{step}.{len(list(target.parent.iterdir()))}")
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def resolve_step_dir(path: str | os.PathLike) -> epath.Path:
  """A checkpoint step folder from a workdir, a checkpoints folder or a step folder.

  Raises:
    FileNotFoundError: if no complete checkpoint is found there.
  """
  path = _path(path)
  for root in (path / "checkpoints", path):  # step folders first (best/<step>/ included)
    if root.exists():
      steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()
                     and (p / "params").exists())
      if steps:
        return root / str(steps[-1])
  if (path / "params").exists():  # a step folder, an export, or best/ of an older run
    return path
  raise FileNotFoundError(f"no checkpoint found at {path} (expected a workdir, its "
                          "checkpoints/ folder, a step folder or an export holding params/)")


def restore_params(path: str | os.PathLike, abstract_params: Any, shardings: Any) -> Any:
  """Restores only the `params` item from a step folder or an export folder."""
  step_dir = resolve_step_dir(path)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(step_dir / "params", _abstract(abstract_params, shardings))


@dataclasses.dataclass
class Resumed:
  state: dict[str, Any]
  step: int
  source: str  # 'workdir', 'resume_from', 'init_from' or 'scratch'


def initial_state(ckpt: Checkpointer, config, abstract_state: dict[str, Any],
                  shardings: dict[str, Any], init_fn: Callable[[], dict[str, Any]]
                  ) -> Resumed:
  """Applies the resume precedence of the module docstring.

  Args:
    ckpt: the workdir's checkpointer.
    config: full config (`checkpoint.resume_from`, `checkpoint.init_from`).
    abstract_state: {'params', 'opt_state'} of ShapeDtypeStructs.
    shardings: matching NamedShardings.
    init_fn: returns a freshly initialised {'params', 'opt_state'} on `shardings`.

  Returns:
    The state to train from, its step and where it came from.
  """
  strict = bool(config.checkpoint.strict_restore)
  steps = sorted(ckpt.all_steps(), reverse=True)
  for step in steps:
    try:
      state, meta = ckpt.restore(step, abstract_state, shardings)
    except Exception as e:  # any unreadable file or metadata
      reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
      if strict:
        raise UnreadableCheckpointError(
            f"checkpoint step {step} in {ckpt.directory} is unreadable ({reason}); "
            "config.checkpoint.strict_restore=True stops here (without it the step is set "
            "aside and the newest readable checkpoint restored)") from e
      moved = ckpt.set_aside(step)
      logging.warning("checkpoint step %d in %s is unreadable (%s): skipped and moved to %s; "
                      "trying the previous checkpoint", step, ckpt.directory, reason, moved)
      continue
    return Resumed(state, int(meta.get("step", step)), "workdir")
  if steps:
    # Never start a long run over from scratch behind a warning.
    raise UnreadableCheckpointError(
        f"no checkpoint in {ckpt.directory} is readable (steps {steps}, moved to "
        f"{ckpt.directory.parent / UNREADABLE_DIR}); rerun to start from "
        "resume_from/init_from/scratch, or move a repaired step back")
  if config.checkpoint.resume_from:
    step_dir = resolve_step_dir(config.checkpoint.resume_from)
    other = Checkpointer(step_dir.parent, every_steps=1, keep=None, async_save=False)
    try:
      state, meta = other.restore(int(step_dir.name), abstract_state, shardings)
    finally:
      other.close()
    return Resumed(state, int(meta.get("step", int(step_dir.name))), "resume_from")
  state = init_fn()
  if config.checkpoint.init_from:
    state["params"] = restore_params(config.checkpoint.init_from, abstract_state["params"],
                                     shardings["params"])
    return Resumed(state, 0, "init_from")
  return Resumed(state, 0, "scratch")


class PreemptionWatcher:
  """Notices SIGTERM so the loop can save a checkpoint at the current step and exit cleanly.

  Single process: our own SIGTERM handler sets a flag. Multi-process: JAX's preemption sync
  point (the coordination service catches SIGTERM on any process) makes every process agree
  on the same step, so they all save it together.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._multi = jax.process_count() > 1
    self._previous = None
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # the signal module's handler signature
    logging.warning("SIGTERM received: saving a checkpoint at the current step, then exiting")
    self._flag.set()

  def reached(self, step: int) -> bool:
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


class BestKeeper:
  """Keeps the parameters with the highest validation score in `<workdir>/best/<step>/`.

  Orbax's own selection (`CheckpointManagerOptions.best_fn`, one checkpoint kept): each step
  folder holds `params` (a params-only checkpoint, like an export's) and `meta` (the step, the
  metric and the score); the best score survives restarts. Every process calls `update` (the
  save is collective). A workdir written before this layout (`best/params`, `best/meta.json`)
  is read as it is until a better score replaces it.
  """

  def __init__(self, workdir: str | os.PathLike, metric: str):
    self.dir = _path(workdir) / "best"
    self.metric = metric
    self.best = float("-inf")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max",
        keep_checkpoints_without_metrics=False, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.dir, options=options,
                                          item_names=("params", "meta"))
    step = self._manager.best_step()
    if step is not None:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      self.best = float(meta["meta"]["score"])
    elif (self.dir / "meta.json").exists():  # the layout before best/<step>/
      self.best = float(json.loads((self.dir / "meta.json").read_text())["score"])

  def update(self, step: int, score: float, params: Any) -> bool:
    """Saves `params` if `score` beats the best so far; returns whether it did."""
    if not score > self.best:  # also False for nan
      return False
    meta = {"step": int(step), "metric": self.metric, "score": float(score)}
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
        metrics={"score": float(score)}, force=True)
    self._manager.wait_until_finished()
    self.best = float(score)
    return True

  def close(self) -> None:
    self._manager.close()
