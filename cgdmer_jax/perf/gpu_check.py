"""The GPU check: one command that measures the step on one accelerator, writing as it goes.

  python3 -m cgdmer_jax.perf.gpu_check --out_dir=$OUT --peer_dir=.carry/st_mem \
      --peer_script=.carry/st_mem_throughput.py [--budget_s=480]
  python -m cgdmer_jax.perf.gpu_check --dry_run --out_dir=/tmp/gpu_check [--peer_dir=...]

The measurements (docs/PERFORMANCE.md, "GPU check"), in this order, each started only while
the total budget (--budget_s) still holds its own (`PLAN`), the most important first:
  1. `stmem_eager`: ST-MEM's own base step through the peer harness (a subprocess;
     `--device cuda --autocast bf16`) at --stmem_batch, 2250 samples, patch 75, mask ratio
     0.75; before this process first touches the GPU.
  2. `base`: configs/pretrain.py:size=base, bfloat16, float32 parameters (master weights),
     the GPU defaults. The batch fills the chip: the XLA FLOP-counting twin
     (`flops.xla_step_flops`: unrolled, no remat, XLA attention, more memory than the step)
     compiled at --probe_batch gives FLOPs and memory per example (`fit_batch`).
  3. `stmem_ours`: configs/stmem_matched.py:size=base in bfloat16 at --stmem_batch.
  4. `stmem_compile`: the peer step under `torch.compile` (its compile took over 150 s on the
     H200 machine's 16 cores, 2026-12-04), in the quarter of the card JAX's pool leaves free
     (XLA_PYTHON_CLIENT_MEM_FRACTION=0.75 unless given).
  5. `SWITCHES`, one at a time, same batch and process, and `small` at its own filled batch.
MFU = XLA FLOPs / step time / the bf16 peak of `flops.PEAK_TFLOPS`. gpu_check.json and .md
in --out_dir are rewritten after each measurement; a watchdog ends the process (exit 3)
--grace_s after the budget. --dry_run: tiny sizes, 1 step, the peer on the CPU, budgets 10x.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
  # Before a GPU backend starts: JAX may take most of the card (the peers ran before).
  # JAX's pool leaves a quarter of the card to the peer's torch.compile run (`stmem_compile`).
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import importlib.metadata
import json
import platform
import subprocess
import sys
import threading
import time
import traceback
from typing import Any
from typing import Callable

import jax
from absl import app
from absl import flags

from cgdmer_jax import cli
from cgdmer_jax import overrides
from cgdmer_jax.models import layers
from cgdmer_jax.perf import flops as flops_lib
from cgdmer_jax.perf import gpu_report
from cgdmer_jax.perf import step_timing
from cgdmer_jax.perf import stmem_compare
from cgdmer_jax.train import loop
from cgdmer_jax.train import sharding
from configs import pretrain
from configs import stmem_matched

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Write gpu_check.json and gpu_check.md here.")
# --peer_dir, --peer_script, --peer_python are stmem_compare's flags (FLAGS.peer_*); without
# the first two the peer measurements are errors.
_BUDGET = flags.DEFINE_float("budget_s", 480.0, "Total seconds for all measurements.")
_GRACE = flags.DEFINE_float("grace_s", 30.0, "Watchdog: exit this long after the budget.")
_DRY = flags.DEFINE_bool("dry_run", False, "Tiny sizes, 1 step, the peer on the CPU.")
_ONLY = flags.DEFINE_list("only", [], "Run only these measurements (names in PLAN).")
_STMEM_BATCH = flags.DEFINE_integer("stmem_batch", 256, "Batch of both ST-MEM-matched steps.")
_PROBE_BATCH = flags.DEFINE_integer("probe_batch", 32, "Batch of the FLOP/memory probe.")
_MEM_FRACTION = flags.DEFINE_float("memory_fraction", 0.7, "Fill this much of bytes_limit.")
_STEPS = flags.DEFINE_integer("timed_steps", 10, "Timed steps per measurement (dry run: 1).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s override (0: flops.PEAK_TFLOPS).")

# (name, seconds it may take): upper estimates for one H200, in the order they run.
PLAN = (("stmem_eager", 60), ("base", 150), ("stmem_ours", 60), ("stmem_compile", 240),
        ("xla_attention", 50), ("remat", 50), ("small", 90), ("unrolled", 70),
        ("batch_chunks_8", 40), ("einsum_attention", 50))
DRY_RUN_BUDGET_SCALE = 10
# The switches: (name, runs on, overrides); each flips one GPU default of the measured config.
SWITCHES = {
    "xla_attention": ("base", {"model.attention": "xla"}),
    "remat": ("base", {"model.remat": "true"}),
    "unrolled": ("base", {"model.scan_layers": "false"}),
    "batch_chunks_8": ("stmem_ours", {"model.batch_chunks": "8"}),
    "einsum_attention": ("base", {"model.attention": "einsum"}),
}


def fit_batch(probe_bytes: int, probe_batch: int, state_bytes: int, limit_bytes: int | None,
              fraction: float, multiple: int = 16, max_batch: int = 4096) -> int:
  """The largest batch whose memory, extrapolated from a probe compile, fits the device.

  Memory is modelled as state + batch * per-example bytes, the per-example bytes taken as
  (probe - state) / probe batch; gradients and other batch-independent buffers are thereby
  counted as if they grew with the batch, which errs on the small side.

  Args:
    probe_bytes: `flops.compiled_memory_bytes` of a step compiled at `probe_batch`.
    probe_batch: that step's global batch.
    state_bytes: bytes of the training state (parameters and optimizer moments).
    limit_bytes: the device's `memory_stats()['bytes_limit']`, or None (e.g. on CPU).
    fraction: share of `limit_bytes` to fill.
    multiple, max_batch: the batch is a multiple of `multiple` (one at least), <= `max_batch`.

  Returns:
    The batch; `probe_batch` when the limit or the probe's memory is unknown.
  """
  if not limit_bytes or not probe_bytes:
    return probe_batch
  per_example = max(probe_bytes - state_bytes, 1) / probe_batch
  batch = int((fraction * limit_bytes - state_bytes) / per_example) // multiple * multiple
  return max(multiple, min(batch, max_batch))


class Recorder:
  """Results so far, written to JSON and a table after each measurement and by the watchdog."""

  def __init__(self, out_dir: str, budget_s: float):
    self.out_dir, self.budget_s, self.t0 = out_dir, budget_s, time.perf_counter()
    self.lock = threading.Lock()
    self.current: str | None = None
    self.child: subprocess.Popen | None = None
    self.report: dict[str, Any] = dict(budget_s=budget_s, started_utc=time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), measurements={})
    os.makedirs(out_dir, exist_ok=True)

  def remaining(self) -> float:
    return self.budget_s - (time.perf_counter() - self.t0)

  def run(self, name: str, budget: float, fn: Callable[[], dict[str, Any]]) -> dict | None:
    """Runs `fn` if the budget still holds `budget` seconds; records its result or error."""
    if self.remaining() < budget:
      self.put(name, dict(status="skipped", reason=f"{self.remaining():.0f} s of the total "
                          f"budget left, this measurement is budgeted {budget:.0f} s"))
      return None
    self.current, t0 = name, time.perf_counter()
    try:
      result = dict(fn(), status="ok")
    except Exception as e:
      result = dict(status="error", error=f"{type(e).__name__}: {str(e)[:2000]}",
                    traceback=traceback.format_exc()[-4000:])
    result["wall_s"] = time.perf_counter() - t0
    self.put(name, result)
    print(f"[{time.perf_counter() - self.t0:6.1f} s] {name}: {result['status']} "
          f"({result['wall_s']:.1f} s) {result.get('error', '')}", flush=True)
    return result if result["status"] == "ok" else None

  def put(self, name: str, result: dict[str, Any]) -> None:
    with self.lock:
      self.report["measurements"][name] = result
      self.write()

  def write(self) -> None:
    """Atomic rewrite of gpu_check.json and gpu_check.md (caller holds the lock)."""
    self.report["elapsed_s"] = time.perf_counter() - self.t0
    self.report["summary"] = gpu_report.summary(self.report["measurements"], SWITCHES)
    outputs = [("gpu_check.json", json.dumps(self.report, indent=2, default=str))]
    try:  # the JSON is what counts; a table that fails to render must not lose it
      outputs.append(("gpu_check.md", gpu_report.table(self.report)))
    except Exception as e:
      outputs.append(("gpu_check.md", f"table failed: {type(e).__name__}: {e}\n"))
    for fname, text in outputs:
      tmp = os.path.join(self.out_dir, fname + ".tmp")
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, os.path.join(self.out_dir, fname))

  def watchdog(self, after_s: float) -> threading.Timer:
    def fire():
      with self.lock:
        self.report["watchdog"] = (f"ended the process {after_s:.0f} s after the start, "
                                   f"during {self.current!r}")
        if self.child is not None:
          self.child.kill()
        self.write()
      print(self.report["watchdog"], flush=True)
      os._exit(3)
    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def _versions() -> dict[str, str]:
  out = dict(python=platform.python_version())
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "torch",
               "jax-cuda13-plugin", "jax-cuda12-plugin"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def _batch(flag) -> int:
  """A batch flag's value; 8 in the dry run (divisible by the CPU's 8 batch chunks)."""
  return 8 if _DRY.value else flag.value


def run_peer(rec: Recorder, compiled: bool, budget: float) -> dict[str, Any]:
  """ST-MEM's own base step through the peer harness, in a subprocess; its JSON line."""
  peer_dir, script = flags.FLAGS.peer_dir, flags.FLAGS.peer_script
  if not (peer_dir and script):
    raise FileNotFoundError("--peer_dir and --peer_script not given")
  extra = ("--device", "cpu") if _DRY.value else ("--device", "cuda", "--autocast", "bf16")
  dry = _DRY.value
  cmd = stmem_compare.peer_command(
      flags.FLAGS.peer_python or sys.executable, script, peer_dir, "tiny" if dry else "base",
      _batch(_STMEM_BATCH), 1 if dry else _STEPS.value, os.cpu_count() or 1,
      warmup=1 if dry else 3, extra=extra + (("--compile",) if compiled else ()))
  with rec.lock:
    rec.child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    stdout, stderr = rec.child.communicate(timeout=max(1.0, min(budget, rec.remaining())))
  except subprocess.TimeoutExpired:
    rec.child.kill()
    raise
  finally:
    code, rec.child = rec.child.returncode, None
  if code != 0:
    raise RuntimeError(f"peer exited {code}: {stderr[-1500:]}")
  return dict(json.loads(stdout.strip().splitlines()[-1]), command=cmd)


def _config(which: str):
  """The measured configs (bfloat16 compute, float32 parameters); tiny ones in the dry run."""
  if which == "stmem_ours":
    c = stmem_matched.get_config(f"size={'tiny' if _DRY.value else 'base'},"
                                 f"batch={_batch(_STMEM_BATCH)}")
  else:
    c = pretrain.get_config(f"size={'tiny' if _DRY.value else which}")
  c.model.dtype = "bfloat16"
  return c


def measure(config, devices, *, fit: bool, xla: dict | None = None) -> dict[str, Any]:
  """`step_timing.run_step_benchmark` at a batch that fills the device (`fit`) or as given.

  Args:
    config: the config; its batch is used unless `fit`.
    devices: the devices (one).
    fit: size the batch with the counting twin at --probe_batch (also the XLA FLOP count).
    xla: an XLA count to reuse (same math): {'flops', 'dot_flops', 'batch'}.

  Returns:
    The benchmark's dict plus the probe and the FLOP source.
  """
  extra: dict[str, Any] = {}
  if fit:
    probe = overrides.apply(config, {})
    probe.data.batch_size = _batch(_PROBE_BATCH)
    counted = flops_lib.xla_step_flops(probe)
    s = loop.setup(probe, sharding.make_mesh(probe, devices=devices))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(s.abstract_state)
                      if jax.numpy.issubdtype(x.dtype, jax.numpy.number))
    limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    config = overrides.apply(config, {})
    config.data.batch_size = fit_batch(counted["memory_bytes"], probe.data.batch_size,
                                       state_bytes, limit, _MEM_FRACTION.value)
    xla = dict(counted, batch=probe.data.batch_size)
    extra = dict(probe_batch=probe.data.batch_size, probe_memory_bytes=counted["memory_bytes"],
                 state_bytes=state_bytes, bytes_limit=limit)
  dry = _DRY.value
  r = step_timing.run_step_benchmark(config, devices, steps=1 if dry else _STEPS.value,
                                     warmup=1 if dry else 3, xla_flops=False,
                                     peak_tflops=_PEAK.value)
  if xla:
    # Model FLOPs grow with the batch like the analytic count (SigLIP's B^2 included).
    scale = r["flops_per_step_analytic"] / flops_lib.analytic_step_flops(
        config, xla["batch"])["total"]
    r["flops_per_step_xla"] = xla["flops"] * scale
    r["flops_per_step_xla_dots"] = xla["dot_flops"] * scale
    r["flops_xla_over_analytic"] = r["flops_per_step_xla"] / r["flops_per_step_analytic"]
    r["achieved_tflops"] = r["flops_per_step_xla"] / r["step_s_p50"] / 1e12
    peak = (r["peak_tflops_per_device"] or 0) * 1e12 or None
    r["mfu"] = flops_lib.mfu(r["flops_per_step_xla"], r["step_s_p50"], 1, peak)
    r["flops_source"] = f"XLA cost analysis of the counting twin at batch {xla['batch']}, scaled"
  else:
    r["flops_source"] = "analytic matmul count (no XLA count taken)"
  model = {k: config.model[k] for k in ("dtype", "attention", "scan_layers", "remat",
                                        "batch_chunks")}
  model["attention_resolved"] = layers.attention_impl(config.model.attention,
                                                      layers.compute_dtype(config.model.dtype))
  return dict(r, **extra, config_overrides=model)


def main(argv) -> None:
  del argv
  scale = DRY_RUN_BUDGET_SCALE if _DRY.value else 1  # a CPU is far slower than the GPU
  rec = Recorder(_OUT_DIR.value, _BUDGET.value * scale)
  rec.watchdog(_BUDGET.value * scale + _GRACE.value)
  rec.report.update(versions=_versions(), dry_run=_DRY.value, argv=sys.argv,
                    host_cpus=os.cpu_count())
  wanted = [n for n, _ in PLAN if not _ONLY.value or n in _ONLY.value]
  if set(_ONLY.value) - set(wanted):
    raise app.UsageError(f"--only: unknown {sorted(set(_ONLY.value) - set(wanted))}")
  budgets = {n: b * scale for n, b in PLAN}
  done: dict[str, dict] = {}
  if "stmem_eager" in wanted:  # before JAX takes the GPU
    rec.run("stmem_eager", budgets["stmem_eager"],
            lambda: run_peer(rec, False, budgets["stmem_eager"]))
  try:
    devices = jax.devices()[:1]
  except RuntimeError as e:  # no usable backend: keep the peers' numbers and say why
    with rec.lock:
      rec.report["jax_backend_error"] = f"{type(e).__name__}: {e}"
      rec.write()
    raise
  with rec.lock:
    rec.report.update(platform=jax.default_backend(), device_kind=devices[0].device_kind,
                      device_memory_stats=devices[0].memory_stats())
  configs = {}

  def config_of(name: str):
    if name not in configs:
      configs[name] = _config(name)
    return configs[name]
  for name in wanted:
    if name == "stmem_eager":
      continue
    if name == "stmem_compile":
      def fn():
        return run_peer(rec, True, budgets["stmem_compile"])
    elif name in ("base", "stmem_ours", "small"):
      def fn(n=name):
        return measure(config_of(n), devices, fit=(n != "stmem_ours"))
    else:
      on, changes = SWITCHES[name]
      if on not in done:
        rec.put(name, dict(status="skipped", reason=f"{on!r} did not run"))
        continue
      def fn(on=on, changes=changes):
        c = overrides.apply(config_of(on), changes)
        c.data.batch_size = done[on]["global_batch"]
        xla = None
        if done[on]["flops_source"].startswith("XLA"):
          xla = dict(flops=done[on]["flops_per_step_xla"],
                     dot_flops=done[on]["flops_per_step_xla_dots"], batch=c.data.batch_size)
        return dict(measure(c, devices, fit=False, xla=xla), overrides=changes)
    result = rec.run(name, budgets[name], fn)
    if result:
      done[name] = result
  with rec.lock:
    rec.write()
  print(gpu_report.table(rec.report), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["out_dir"])
  cli.run(main)
