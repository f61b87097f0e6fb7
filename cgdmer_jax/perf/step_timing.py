"""Timing of the training step: synthetic batches, step timing, interleaved ablations, reader rate.

The measuring core of `perf/benchmark.py` (which adds the command line, weak scaling and the
report) and `perf/stmem_compare.py`. Every function builds the step with `loop.setup(config,
mesh)`, the trainer's jitted, donated, sharded step, and times the compiled program.
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any
from typing import Iterator

import jax
import ml_collections
import numpy as np

from cgdmer_jax import masking
from cgdmer_jax import objective
from cgdmer_jax import overrides
from cgdmer_jax.data import features
from cgdmer_jax.models import cgdmer
from cgdmer_jax.perf import flops as flops_lib
from cgdmer_jax.train import loop
from cgdmer_jax.train import prefetch
from cgdmer_jax.train import sharding

# ---------------------------------------------------------------------------------------------
# Batches.


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch of the trainer's shapes: N(0, 1) mV ECGs, random reports of random length."""
  rng = np.random.default_rng(seed)
  batch = objective.dummy_batch(config, batch_size)
  batch["ecg"] = rng.standard_normal(batch["ecg"].shape).astype(np.float32)
  L = config.model.max_report_len
  lens = rng.integers(L // 4, L + 1, size=batch_size).astype(np.int32)
  ids = rng.integers(features.NUM_SPECIAL, config.model.vocab_size, size=(batch_size, L))
  batch["report_ids"] = np.where(np.arange(L)[None] < lens[:, None], ids,
                                 features.PAD_ID).astype(np.int32)
  batch["report_len"] = lens
  batch["has_report"] = np.ones((batch_size,), bool)
  return batch


def batch_stream(config: ml_collections.ConfigDict, mesh, kind: str) -> Iterator[dict]:
  """Global device batches: one synthetic batch forever, or the reader through device prefetch."""
  if kind == "synthetic":
    batch = sharding.global_batch(synthetic_batch(config, config.data.batch_size), mesh)
    return itertools.repeat(batch)
  return prefetch.device_batches(loop.train_stream(config, 0), mesh,
                              config.data.prefetch)


def tokens_per_example(config: ml_collections.ConfigDict) -> int:
  """ECG tokens (leads x time patches, all of them) plus the report length when it is read."""
  n = masking.ecg_mask_counts(config).num_tokens
  if cgdmer.branches(config)["text"]:
    n += config.model.max_report_len
  return n


# ---------------------------------------------------------------------------------------------
# Timing.


def _pct(values: list[float], q: float) -> float:
  return float(np.percentile(np.asarray(values), q))


def _peak_device_memory(compiled, mesh) -> tuple[int | None, str]:
  """Peak bytes on one device: allocator statistics where the backend has them, else XLA's.

  The allocator's peak is the process's high-water mark so far (no reset exists), so in a
  process that ran a bigger program first it is that program's; `compiled_memory_bytes` in the
  result is the program's own.
  """
  stats = mesh.devices.flat[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device memory_stats peak_bytes_in_use"
  total = flops_lib.compiled_memory_bytes(compiled)
  if total is None:
    return None, "unavailable"
  return total, "compiled.memory_analysis (temp + arguments + outputs - aliased)"


def run_step_benchmark(config: ml_collections.ConfigDict, devices: list, *, steps: int,
                       warmup: int, input_kind: str = "synthetic", xla_flops: bool = True,
                       peak_tflops: float = 0.0, profile_dir: str | None = None,
                       profile_steps: int = 3) -> dict[str, Any]:
  """Compiles and times the training step of `config` on `devices`.

  Args:
    config: full config; `data.batch_size` is the global batch.
    devices: the devices of the mesh.
    steps: timed steps; warmup: untimed steps first.
    input_kind: 'synthetic' or 'tfrecord'.
    xla_flops: also count FLOPs with XLA (compiles the counting twin).
    peak_tflops: per-device peak override (0: the table in flops.py).
    profile_dir: if set, a profiler trace of `profile_steps` more steps is written there.

  Returns:
    dict of the measurements (see the module docstring); times in seconds.
  """
  mesh = sharding.make_mesh(config, devices=devices)
  s = loop.setup(config, mesh)
  B = config.data.batch_size
  with jax.set_mesh(mesh):
    state = s.init_state()
    batches = batch_stream(config, mesh, input_kind)
    batch = next(batches)
    t0 = time.perf_counter()
    compiled = s.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
      state, _ = compiled(state, next(batches))
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, mets = compiled(state, next(batches))
      jax.block_until_ready(mets)
      times.append(time.perf_counter() - t0)
    # The trainer's pattern: dispatch step t+1, then fetch step t's metrics.
    dispatch, pending = [], None
    t_start = time.perf_counter()
    for _ in range(steps):
      t0 = time.perf_counter()
      state, mets = compiled(state, next(batches))
      dispatch.append(time.perf_counter() - t0)
      if pending is not None:
        jax.device_get(pending)
      pending = mets
    jax.device_get(pending)
    pipelined_s = (time.perf_counter() - t_start) / steps
    if profile_dir:
      with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
        for i in range(profile_steps):
          with jax.profiler.StepTraceAnnotation("train", step_num=i):
            state, mets = compiled(state, next(batches))
            jax.block_until_ready(mets)
  p50 = statistics.median(times)
  memory, memory_source = _peak_device_memory(compiled, mesh)
  analytic = flops_lib.analytic_step_flops(config, B)["total"]
  counted = flops_lib.xla_step_flops(config) if xla_flops else {}
  xla, xla_dots = counted.get("flops"), counted.get("dot_flops")
  model_flops = xla if xla else analytic
  peak = flops_lib.peak_flops_per_device(mesh.devices.flat[0].device_kind, config.model.dtype,
                                         peak_tflops)
  return dict(
      devices=mesh.size, mesh=dict(mesh.shape), global_batch=B, per_device_batch=B // mesh.size,
      compile_s=compile_s, step_s_p50=p50, step_s_p90=_pct(times, 90),
      step_s_min=min(times), pipelined_step_s=pipelined_s,
      dispatch_s_mean=statistics.fmean(dispatch),
      examples_per_s=B / p50, tokens_per_s=B * tokens_per_example(config) / p50,
      flops_per_step_xla=xla, flops_per_step_xla_dots=xla_dots,
      flops_per_step_analytic=analytic,
      flops_xla_over_analytic=(xla / analytic) if xla else None,
      achieved_tflops=model_flops / p50 / 1e12,
      peak_tflops_per_device=(peak / 1e12) if peak else None,
      mfu=flops_lib.mfu(model_flops, p50, mesh.size, peak),
      peak_memory_bytes=memory, peak_memory_source=memory_source,
      compiled_memory_bytes=flops_lib.compiled_memory_bytes(compiled),
      loss_last=float(np.asarray(jax.device_get(mets["loss"]))))


def run_ablations(config: ml_collections.ConfigDict, devices: list,
                  ablations: list[tuple[str, dict[str, str]]], *, steps: int,
                  warmup: int) -> list[dict[str, Any]]:
  """Times the config and each override set interleaved, one step of each per round.

  Returns:
    One dict per variant ('config' first): name, overrides, step_s_p50, step_s_min and
    `time_vs_config` = p50 of the variant / p50 of the config (> 1: the variant is slower).
  """
  variants = [("config", {})] + list(ablations)
  runs = []
  for name, changes in variants:
    c = overrides.apply(config, changes)
    mesh = sharding.make_mesh(c, devices=devices)
    s = loop.setup(c, mesh)
    with jax.set_mesh(mesh):
      state = s.init_state()
      batch = sharding.global_batch(synthetic_batch(c, c.data.batch_size), mesh)
      compiled = s.train_step.lower(state, batch).compile()
      for _ in range(warmup):
        state, _ = compiled(state, batch)
      jax.block_until_ready(state)
    runs.append(dict(name=name, overrides=changes, mesh=mesh, compiled=compiled, state=state,
                     batch=batch, times=[]))
  for _ in range(steps):
    for r in runs:
      with jax.set_mesh(r["mesh"]):
        t0 = time.perf_counter()
        r["state"], mets = r["compiled"](r["state"], r["batch"])
        jax.block_until_ready(mets)
        r["times"].append(time.perf_counter() - t0)
  base = statistics.median(runs[0]["times"])
  return [dict(name=r["name"], overrides=r["overrides"],
               step_s_p50=statistics.median(r["times"]), step_s_min=min(r["times"]),
               time_vs_config=statistics.median(r["times"]) / base) for r in runs]


def reader_rate(config: ml_collections.ConfigDict, batches: int = 20) -> float:
  """Examples/s of the training reader alone (after its first batch)."""
  it = loop.train_stream(config, 0)
  next(it)
  t0 = time.perf_counter()
  for _ in itertools.islice(it, batches):
    pass
  return batches * config.data.batch_size / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Ablation specs.


def parse_ablation(text: str) -> tuple[str, dict[str, str]]:
  """'name:a.b=1,c.d=x' -> ('name', {'a.b': '1', 'c.d': 'x'}) for `overrides.apply`."""
  name, _, rest = text.partition(":")
  items = overrides.parse_items(rest)
  if not name or not items:
    raise ValueError(f"--ablation={text!r} is not name:key=value[,key=value]")
  return name, items
