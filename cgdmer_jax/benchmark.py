"""Throughput, FLOPs, MFU, memory and scaling of the training step; profiles and ablations.

  python -m cgdmer_jax.benchmark --config=configs/pretrain.py:size=base [--steps=20] \
      [--devices=1,2,4,8] [--input=synthetic|tfrecord --config.data.dir=DIR] [--out=FILE] \
      [--profile_dir=DIR] [--peak_tflops=X] [--siglip_memory_batch=32768] \
      [--ablation=name:model.scan_layers=false,model.attention=xla ...]

Measures exactly the trainer's step: `train.setup(config, mesh)` builds the jitted, donated,
sharded step. For each device count (weak scaling: the per-device batch is fixed, the global
batch grows with the devices) it reports compile seconds, step time p50/p90 (each step waited
for), the trainer-style pipelined step time (step t+1 dispatched before step t's metrics are
fetched: no host round trip per step), examples/s and tokens/s (ECG tokens, plus report tokens
when the report tower runs), model FLOPs per step from XLA (`flops.xla_step_flops`) next to the
analytic count, achieved FLOP/s and MFU against `flops.PEAK_TFLOPS` (or --peak_tflops), peak
device memory (device statistics on GPU/TPU; the compiler's buffer assignment on CPU) and the
scaling efficiency. With --input=tfrecord the steps read real batches through the trainer's
device prefetch and the reader's own examples/s is printed next to what the step consumes.

--devices beyond the real device count works on CPU only: before jax is imported the process
sets XLA_FLAGS=--xla_force_host_platform_device_count=max(devices). Those fake devices share
the host's cores, so CPU "scaling" shows that the sharded program runs, not a speed-up.

--ablation runs named config overrides against the given config in the same process,
interleaved step by step (the machine's noise hits both alike), and prints time ratios.
--profile_dir writes a `jax.profiler` trace of --profile_steps steps (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import os
import sys


def _force_host_devices(argv: list[str]) -> None:
  """Fake CPU devices for --devices=...: must run before jax is imported."""
  wanted = [a.split("=", 1)[1] for a in argv if a.startswith("--devices=")]
  if not wanted or not wanted[-1]:
    return
  n = max(int(x) for x in wanted[-1].split(","))
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


if __name__ == "__main__":
  _force_host_devices(sys.argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import itertools
import json
import statistics
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from cgdmer_jax import flops as flops_lib
from cgdmer_jax import masking
from cgdmer_jax import objective
from cgdmer_jax import sharding
from cgdmer_jax import siglip_chunked
from cgdmer_jax import train
from cgdmer_jax.data import features

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pretrain.py:size=base; --config.a.b=v overrides.",
    lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per device count.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_DEVICES = flags.DEFINE_list("devices", [], "Device counts, e.g. 1,2,4,8 (default: all).")
_PER_DEVICE_BATCH = flags.DEFINE_integer(
    "per_device_batch", 0, "Examples per device (default: data.batch_size / max(devices)).")
_INPUT = flags.DEFINE_enum("input", "synthetic", ["synthetic", "tfrecord"],
                           "Random batches resident on device, or the real reader.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Write a jax.profiler trace here.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "Steps in the profile.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device (override).")
_SIGLIP_BATCH = flags.DEFINE_integer(
    "siglip_memory_batch", 0, "Compare SigLIP all-gather vs chunked memory at this global batch.")
_ABLATIONS = flags.DEFINE_multi_string(
    "ablation", [], "name:key=value[,key=value...]: config overrides timed against the config.")
_XLA_FLOPS = flags.DEFINE_bool("xla_flops", True, "Count FLOPs with XLA (compiles a twin).")


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
  return train.device_batches(train.train_stream(config, 0), mesh,
                              config.data.get("prefetch", 2))


def tokens_per_example(config: ml_collections.ConfigDict) -> int:
  """ECG tokens (leads x time patches, all of them) plus the report length when it is read."""
  n = masking.ecg_mask_counts(config).num_tokens
  if config.loss.contrastive > 0 or config.loss.text > 0:
    n += config.model.max_report_len
  return n


# ---------------------------------------------------------------------------------------------
# Timing.


def _pct(values: list[float], q: float) -> float:
  return float(np.percentile(np.asarray(values), q))


def _peak_device_memory(compiled, mesh) -> tuple[int | None, str]:
  """Peak bytes on one device: allocator statistics where the backend has them, else XLA's."""
  stats = mesh.devices.flat[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device memory_stats peak_bytes_in_use"
  mem = compiled.memory_analysis()
  if mem is None:
    return None, "unavailable"
  total = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
           - mem.alias_size_in_bytes)
  return int(total), "compiled.memory_analysis (temp + arguments + outputs - aliased)"


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
  s = train.setup(config, mesh)
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
  for name, overrides in variants:
    c = with_overrides(config, overrides)
    mesh = sharding.make_mesh(c, devices=devices)
    s = train.setup(c, mesh)
    with jax.set_mesh(mesh):
      state = s.init_state()
      batch = sharding.global_batch(synthetic_batch(c, c.data.batch_size), mesh)
      compiled = s.train_step.lower(state, batch).compile()
      for _ in range(warmup):
        state, _ = compiled(state, batch)
      jax.block_until_ready(state)
    runs.append(dict(name=name, overrides=overrides, mesh=mesh, compiled=compiled, state=state,
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
  it = train.train_stream(config, 0)
  next(it)
  t0 = time.perf_counter()
  for _ in itertools.islice(it, batches):
    pass
  return batches * config.data.batch_size / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Config plumbing and the report.


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: dict[str, str]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys set from strings (typed like the current value)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key, text in overrides.items():
    *path, leaf = key.split(".")
    node = out
    for p in path:
      node = node[p]
    current = node[leaf]
    if isinstance(current, bool):
      value = text.lower() in ("1", "true", "yes")
    elif isinstance(current, (int, float)):
      value = type(current)(text)
    else:
      value = text
    node[leaf] = value
  return out


def parse_ablation(text: str) -> tuple[str, dict[str, str]]:
  """'name:a.b=1,c.d=x' -> ('name', {'a.b': '1', 'c.d': 'x'})."""
  name, _, rest = text.partition(":")
  items = [kv.split("=", 1) for kv in rest.split(",") if kv]
  if not name or not items or any(len(kv) != 2 for kv in items):
    raise ValueError(f"--ablation={text!r} is not name:key=value[,key=value]")
  return name, dict(items)


def weak_scaling(config: ml_collections.ConfigDict, counts: list[int], per_device: int, **kw
                 ) -> list[dict[str, Any]]:
  """`run_step_benchmark` at each device count with a fixed per-device batch."""
  runs = []
  for n in counts:
    c = with_overrides(config, {})
    c.data.batch_size = per_device * n
    runs.append(run_step_benchmark(c, jax.devices()[:n], **kw))
    kw.pop("profile_dir", None)  # one profile, at the first device count
  base = runs[0]["examples_per_s"] / runs[0]["devices"]
  for r in runs:
    r["scaling_efficiency"] = r["examples_per_s"] / r["devices"] / base
  return runs


def _fmt_bytes(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def print_report(report: dict[str, Any]) -> None:
  print(f"device: {report['device_kind']} ({report['platform']}), {report['devices_available']} "
        f"available; host: {report['host_cpus']} CPUs, load {report['load_before']} -> "
        f"{report['load_after']}")
  for r in report["runs"]:
    mfu = "n/a (no peak known: --peak_tflops)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    xla = r["flops_per_step_xla"]
    print(f"[{r['devices']} dev, batch {r['global_batch']}] compile {r['compile_s']:.1f} s; step "
          f"p50 {1e3 * r['step_s_p50']:.1f} ms p90 {1e3 * r['step_s_p90']:.1f} ms; pipelined "
          f"{1e3 * r['pipelined_step_s']:.1f} ms (dispatch {1e3 * r['dispatch_s_mean']:.2f} ms); "
          f"{r['examples_per_s']:.2f} ex/s, {r['tokens_per_s']:.0f} tok/s")
    dots = r["flops_per_step_xla_dots"]
    print(f"    FLOPs/step XLA {xla / 1e9 if xla else float('nan'):.2f} G (matmuls "
          f"{dots / 1e9 if dots else float('nan'):.2f} G), analytic matmuls "
          f"{r['flops_per_step_analytic'] / 1e9:.2f} G (ratio "
          f"{r['flops_xla_over_analytic'] or float('nan'):.3f}); {r['achieved_tflops']:.3f} "
          f"TFLOP/s, MFU {mfu}; peak memory {_fmt_bytes(r['peak_memory_bytes'])} "
          f"({r['peak_memory_source']}); scaling efficiency {r['scaling_efficiency']:.2f}")
  if "input_pipeline" in report:
    ip = report["input_pipeline"]
    print(f"input: reader {ip['reader_examples_per_s']:.1f} ex/s vs step demand "
          f"{ip['step_examples_per_s']:.1f} ex/s: {'keeps up' if ip['keeps_up'] else 'TOO SLOW'}")
  for a in report.get("ablations", []):
    print(f"ablation {a['name']:>20s} {a['overrides']}: p50 {1e3 * a['step_s_p50']:.1f} ms, "
          f"time / config = {a['time_vs_config']:.2f}")
  for impl, m in report.get("siglip_memory", {}).get("per_impl", {}).items():
    print(f"siglip {impl:>10s} at global batch {report['siglip_memory']['global_batch']}: "
          f"temp {_fmt_bytes(m['temp_bytes'])}, peak {_fmt_bytes(m['peak_bytes'])} per device")
  if report.get("profile_dir"):
    print(f"profile: {report['profile_dir']} (tensorboard --logdir, or perfetto_trace.json.gz in "
          "ui.perfetto.dev)")


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  counts = [int(x) for x in _DEVICES.value] or [jax.device_count()]
  if max(counts) > jax.device_count():
    raise app.UsageError(f"--devices={max(counts)} but only {jax.device_count()} "
                         f"{jax.default_backend()} devices exist")
  per_device = _PER_DEVICE_BATCH.value or config.data.batch_size // max(counts)
  if _INPUT.value == "tfrecord":
    from cgdmer_jax.data import reader  # pylint: disable=g-import-not-at-top
    train.apply_dataset_info(config, reader.load_info(config.data.dir))
  load_before = os.getloadavg()
  report: dict[str, Any] = dict(
      config=config.to_dict(), device_kind=jax.devices()[0].device_kind,
      platform=jax.default_backend(), devices_available=jax.device_count(),
      host_cpus=len(os.sched_getaffinity(0)), input=_INPUT.value, per_device_batch=per_device)
  report["runs"] = weak_scaling(
      config, counts, per_device, steps=_STEPS.value, warmup=_WARMUP.value,
      input_kind=_INPUT.value, xla_flops=_XLA_FLOPS.value, peak_tflops=_PEAK_TFLOPS.value,
      profile_dir=_PROFILE_DIR.value, profile_steps=_PROFILE_STEPS.value)
  if _INPUT.value == "tfrecord":
    c = with_overrides(config, {})
    c.data.batch_size = report["runs"][-1]["global_batch"]
    rate, demand = reader_rate(c), report["runs"][-1]["examples_per_s"]
    report["input_pipeline"] = dict(reader_examples_per_s=rate, step_examples_per_s=demand,
                                    keeps_up=rate >= demand)
  if _ABLATIONS.value:
    c = with_overrides(config, {})
    c.data.batch_size = per_device * counts[0]
    report["ablations"] = run_ablations(c, jax.devices()[:counts[0]],
                                        [parse_ablation(a) for a in _ABLATIONS.value],
                                        steps=_STEPS.value, warmup=_WARMUP.value)
  if _SIGLIP_BATCH.value:
    mesh = sharding.make_mesh(config, devices=jax.devices()[:max(counts)])
    report["siglip_memory"] = dict(
        global_batch=_SIGLIP_BATCH.value, devices=mesh.size,
        per_impl=siglip_chunked.memory_report(mesh, _SIGLIP_BATCH.value,
                                              config.model.embed_dim))
  report["profile_dir"] = _PROFILE_DIR.value
  report["load_before"] = [round(x, 2) for x in load_before]
  report["load_after"] = [round(x, 2) for x in os.getloadavg()]
  print_report(report)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
