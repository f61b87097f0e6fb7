"""Throughput, FLOPs, MFU, memory and scaling of the training step; profiles and ablations.

  python -m cgdmer_jax.benchmark --config=configs/pretrain.py:size=base [--steps=20] \
      [--devices=1,2,4,8] [--input=synthetic|tfrecord --config.data.dir=DIR] [--out=FILE] \
      [--profile_dir=DIR] [--peak_tflops=X] [--siglip_memory_batch=32768] \
      [--ablation=name:model.scan_layers=false,model.attention=xla ...]

Measures exactly the trainer's step: `loop.setup(config, mesh)` builds the jitted, donated,
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
  # Also when run through the `cgdmer_jax.benchmark` entry point (runpy, same argv).
  _force_host_devices(sys.argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The imports below follow the environment set above (XLA_FLAGS must precede jax). TensorFlow
# is imported only inside main(), for --input=tfrecord: the synthetic benchmark runs where
# TensorFlow is not installed (tests/test_gpu_check.py).
import json
from typing import Any

import jax
import ml_collections
from absl import app
from absl import flags
from ml_collections import config_flags

from cgdmer_jax import cli
from cgdmer_jax import objective
from cgdmer_jax import overrides
from cgdmer_jax.perf import flops as flops_lib
from cgdmer_jax.perf import siglip_memory
from cgdmer_jax.perf import step_timing
from cgdmer_jax.train import loop
from cgdmer_jax.train import pretrained_text
from cgdmer_jax.train import sharding

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
# Weak scaling and the report.


def weak_scaling(config: ml_collections.ConfigDict, counts: list[int], per_device: int, **kw
                 ) -> list[dict[str, Any]]:
  """`run_step_benchmark` at each device count with a fixed per-device batch."""
  runs = []
  for n in counts:
    c = overrides.apply(config, {})
    c.data.batch_size = per_device * n
    runs.append(step_timing.run_step_benchmark(c, jax.devices()[:n], **kw))
    kw.pop("profile_dir", None)  # one profile, at the first device count
    kw["xla_flops"] = False  # one XLA count (a twin compile), scaled below
  base = runs[0]["examples_per_s"] / runs[0]["devices"]
  first = runs[0]
  for r in runs:
    r["scaling_efficiency"] = r["examples_per_s"] / r["devices"] / base
    if r is not first and first["flops_per_step_xla"]:
      # Model FLOPs grow with the batch like the analytic count (SigLIP's B^2 included).
      scale = r["flops_per_step_analytic"] / first["flops_per_step_analytic"]
      r["flops_per_step_xla"] = first["flops_per_step_xla"] * scale
      r["flops_per_step_xla_dots"] = first["flops_per_step_xla_dots"] * scale
      r["flops_xla_over_analytic"] = first["flops_xla_over_analytic"]
      r["flops_xla_scaled_from_first_run"] = True
      r["achieved_tflops"] = r["flops_per_step_xla"] / r["step_s_p50"] / 1e12
      r["mfu"] = flops_lib.mfu(r["flops_per_step_xla"], r["step_s_p50"], r["devices"],
                               (r["peak_tflops_per_device"] or 0) * 1e12 or None)
  return runs


def _fmt_bytes(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def print_report(report: dict[str, Any]) -> None:
  print(f"device: {report['device_kind']} ({report['platform']}), {report['devices_available']} "
        f"available; host: {report['host_cpus']} CPUs, load {report['load_before']} -> "
        f"{report['load_after']}")
  if "params" in report:
    p = report["params"]
    print(f"parameters: {p['total'] / 1e6:.3f}M (ECG encoder {p['ecg encoder'] / 1e6:.3f}M, "
          f"text backbone {p.get('text backbone', 0) / 1e6:.3f}M)")
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
    from cgdmer_jax.data import reader
    loop.apply_dataset_info(config, reader.load_info(config.data.dir))
  else:
    pretrained_text.resolve(config)  # a pretrained report tower's shape, without a dataset
  load_before = os.getloadavg()
  report: dict[str, Any] = dict(
      config=config.to_dict(), device_kind=jax.devices()[0].device_kind,
      platform=jax.default_backend(), devices_available=jax.device_count(),
      host_cpus=len(os.sched_getaffinity(0)), input=_INPUT.value, per_device_batch=per_device)
  report["params"] = objective.param_counts(config)  # a pretrained report tower included
  report["runs"] = weak_scaling(
      config, counts, per_device, steps=_STEPS.value, warmup=_WARMUP.value,
      input_kind=_INPUT.value, xla_flops=_XLA_FLOPS.value, peak_tflops=_PEAK_TFLOPS.value,
      profile_dir=_PROFILE_DIR.value, profile_steps=_PROFILE_STEPS.value)
  if _INPUT.value == "tfrecord":
    c = overrides.apply(config, {})
    c.data.batch_size = report["runs"][-1]["global_batch"]
    rate, demand = step_timing.reader_rate(c), report["runs"][-1]["examples_per_s"]
    report["input_pipeline"] = dict(reader_examples_per_s=rate, step_examples_per_s=demand,
                                    keeps_up=rate >= demand)
  if _ABLATIONS.value:
    c = overrides.apply(config, {})
    c.data.batch_size = per_device * counts[0]
    report["ablations"] = step_timing.run_ablations(
        c, jax.devices()[:counts[0]], [step_timing.parse_ablation(a) for a in _ABLATIONS.value],
        steps=_STEPS.value, warmup=_WARMUP.value)
  if _SIGLIP_BATCH.value:
    mesh = sharding.make_mesh(config, devices=jax.devices()[:max(counts)])
    report["siglip_memory"] = dict(
        global_batch=_SIGLIP_BATCH.value, devices=mesh.size,
        per_impl=siglip_memory.memory_report(mesh, _SIGLIP_BATCH.value,
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
  cli.run(main)
