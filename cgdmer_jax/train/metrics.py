"""Process-0 metric writers (JSONL and TensorBoard) and the training progress bar.

Every process calls the same methods (habit 5: every process runs the same program); only
process 0 writes anything. `metrics.jsonl` holds one JSON object per logged step.

TensorFlow (the TensorBoard writer) is imported only when TensorBoard files are written: the
step benchmark and the GPU check import the trainer without it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Mapping

import jax
import numpy as np
from etils import epath

from cgdmer_jax import progress


def _to_float(v) -> float:
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard event files on process 0."""

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.active:
      return
    workdir = epath.Path(workdir)  # local or object storage alike
    workdir.mkdir(parents=True, exist_ok=True)
    self._files = contextlib.ExitStack()  # epath's open is a context manager
    self._jsonl = self._files.enter_context((workdir / "metrics.jsonl").open("a"))
    if tensorboard:
      import tensorflow as tf
      tf.config.set_visible_devices([], "GPU")
      self._tf = tf
      self._tb = tf.summary.create_file_writer(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    row = {"step": int(step)}
    row.update({k: _to_float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(row, allow_nan=True) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      with self._tb.as_default(step=int(step)):
        for k, v in row.items():
          if k != "step" and math.isfinite(v):
            self._tf.summary.scalar(k, v)
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._files.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class Progress:
  """A progress bar with ETA on process 0 (plain lines in a log file); a no-op elsewhere."""

  def __init__(self, start: int, total: int, desc: str = "train"):
    self._bar = None
    if jax.process_index() == 0:
      self._bar = progress.bar(total=total, initial=start, desc=desc, unit="step")

  def update(self, n: int = 1, **postfix) -> None:
    if self._bar is None:
      return
    if postfix:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
    self._bar.update(n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class WindowMean:
  """Running means of fetched step metrics between two log points."""

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._n = 0
    self._once: dict[str, float] = {}

  def add_once(self, scalars: Mapping[str, float]) -> None:
    """Metrics measured once in the window (diagnostics): written as they are at `pop`."""
    self._once.update({k: float(v) for k, v in scalars.items()})

  def add(self, scalars: Mapping[str, float]) -> None:
    for k, v in scalars.items():
      self._sums[k] = self._sums.get(k, 0.0) + float(v)
    self._n += 1

  def pop(self) -> dict[str, float]:
    out = {k: v / max(self._n, 1) for k, v in self._sums.items()}
    out.update(self._once)
    self._sums, self._n, self._once = {}, 0, {}
    return out


def val_line(step: int, val: dict[str, float]) -> str:
  """The console line of one validation: the val losses and, when set, the model selection."""
  terms = " ".join(f"{k.removeprefix('val/loss/')} {v:.4f}" for k, v in sorted(val.items())
                   if k.startswith("val/loss/"))
  line = f"step {step}: val loss {val.get('val/loss', float('nan')):.4f}"
  line += f" ({terms})" if terms else ""
  if "val/zero_shot_auc" in val:
    line += f"; val zero-shot AUC {val['val/zero_shot_auc']:.4f}"
  return line
