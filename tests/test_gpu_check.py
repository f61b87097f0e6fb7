"""The GPU check and the benchmark run on a machine without TensorFlow or wfdb (the GPU
machine has neither): the benchmark and the check's dry run with those imports refused, the
batch sizing, the budget, the watchdog and the summary."""

import json
import os
import subprocess
import sys

import pytest

from cgdmer_jax.perf import gpu_check
from cgdmer_jax.perf import gpu_report
from cgdmer_jax.perf import stmem_compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING_ON_GPU_MACHINE = ("tensorflow", "tensorflow_datasets", "apache_beam", "wfdb")

# Runs a module as `python -m` would, with the packages above made unimportable.
_RUN_WITHOUT = """
import importlib.abc, runpy, sys
BLOCKED = {blocked!r}
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError(f'{{name}} is not installed on the GPU machine')
sys.meta_path.insert(0, Refuse())
sys.argv = {argv!r}
runpy.run_module({module!r}, run_name='__main__', alter_sys=True)
"""


def _run_without_tf(module: str, args: list[str], timeout: int = 600):
  code = _RUN_WITHOUT.format(blocked=MISSING_ON_GPU_MACHINE, argv=[module] + args, module=module)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_the_refusal_works():
  # The blocker itself: a module that imports TensorFlow fails under it.
  res = _run_without_tf("cgdmer_jax.data.reader", [], timeout=120)
  assert res.returncode != 0 and "not installed on the GPU machine" in res.stderr


@pytest.mark.slow
def test_benchmark_runs_without_tensorflow(tmp_path):
  out = tmp_path / "bench.json"
  res = _run_without_tf("cgdmer_jax.benchmark", [
      "--config=configs/pretrain.py:size=tiny,variant=ecg_mask_only", "--input=synthetic",
      "--config.data.batch_size=4", "--devices=1", "--steps=1", "--warmup=0",
      "--xla_flops=false", f"--out={out}"])
  assert res.returncode == 0, res.stderr[-3000:]
  run = json.loads(out.read_text())["runs"][0]
  assert run["global_batch"] == 4 and run["step_s_p50"] > 0


@pytest.mark.slow
def test_gpu_check_dry_run_without_tensorflow(tmp_path):
  # `base` in the dry run: tiny, bfloat16, the FLOP/memory probe, the batch fit, one step.
  res = _run_without_tf("cgdmer_jax.perf.gpu_check", [
      "--dry_run", f"--out_dir={tmp_path}", "--only=base", "--peak_tflops=1"])
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads((tmp_path / "gpu_check.json").read_text())
  base = report["measurements"]["base"]
  assert base["status"] == "ok", base
  assert base["config_overrides"]["dtype"] == "bfloat16"
  assert base["config_overrides"]["attention_resolved"] == "einsum"  # 'auto' on CPU
  assert base["global_batch"] == base["probe_batch"] == 8  # no bytes_limit on CPU
  assert base["flops_source"].startswith("XLA")
  # XLA's count adds element-wise work to the analytic matmul count.
  assert 1.0 <= base["flops_per_step_xla"] / base["flops_per_step_analytic"] < 1.2
  assert base["flops_xla_over_analytic"] == pytest.approx(
      base["flops_per_step_xla"] / base["flops_per_step_analytic"])
  assert 0 < base["mfu"] == report["summary"]["base_mfu"]
  assert base["compiled_memory_bytes"] > base["state_bytes"] > 0
  assert report["versions"]["jax"] and report["platform"] == "cpu"
  assert "| base | 8 |" in (tmp_path / "gpu_check.md").read_text()


def test_budget_skips_and_watchdog_keeps_what_finished(tmp_path):
  # Too little budget: nothing starts, the switch names the measurement it needed.
  res = _run_without_tf("cgdmer_jax.perf.gpu_check", [
      "--dry_run", f"--out_dir={tmp_path / 'a'}", "--only=base,remat", "--budget_s=1"])
  assert res.returncode == 0, res.stderr[-3000:]
  ms = json.loads((tmp_path / "a" / "gpu_check.json").read_text())["measurements"]
  assert ms["base"]["status"] == "skipped" and "budgeted 1500 s" in ms["base"]["reason"]
  assert ms["remat"] == {"status": "skipped", "reason": "'base' did not run"}
  # The watchdog ends a measurement that overruns and leaves the JSON behind.
  res = _run_without_tf("cgdmer_jax.perf.gpu_check", [
      "--dry_run", f"--out_dir={tmp_path / 'b'}", "--only=base", "--budget_s=160",
      "--grace_s=-1590"], timeout=120)
  assert res.returncode == 3, res.stderr[-3000:]
  report = json.loads((tmp_path / "b" / "gpu_check.json").read_text())
  assert "during 'base'" in report["watchdog"] and "base" not in report["measurements"]


def test_fit_batch():
  gib = 2**30
  # 2 GiB state, 0.5 GiB per example at the probe: 70% of 100 GiB holds (70 - 2) / 0.5 = 136.
  assert gpu_check.fit_batch(18 * gib, 32, 2 * gib, 100 * gib, 0.7) == 128
  assert gpu_check.fit_batch(18 * gib, 32, 2 * gib, None, 0.7) == 32  # no limit known
  assert gpu_check.fit_batch(18 * gib, 32, 2 * gib, 10 * gib, 0.7) == 16  # at least one multiple
  assert gpu_check.fit_batch(3 * gib, 32, 2 * gib, 1000 * gib, 0.9, max_batch=512) == 512


def test_summary_ratios_and_peer_command():
  ms = {"base": dict(status="ok", step_s_p50=0.2, examples_per_s=640.0, mfu=0.4),
        "remat": dict(status="ok", step_s_p50=0.26),
        "stmem_ours": dict(status="ok", examples_per_s=3000.0, step_s_p50=0.1),
        "stmem_compile": dict(status="ok", samples_per_s=2000.0),  # the harness's name
        "stmem_eager": dict(status="error", error="x")}
  s = gpu_report.summary(ms, gpu_check.SWITCHES)
  assert s["ours_over_stmem_compile"] == pytest.approx(1.5)
  assert "ours_over_stmem_eager" not in s
  assert s["remat_time_vs_default"] == pytest.approx(1.3)
  cmd = stmem_compare.peer_command("py", "h.py", "tree", "base", 256, 10, 16, warmup=3,
                                   extra=("--device", "cuda", "--autocast", "bf16"))
  assert cmd[:4] == ["py", "h.py", "--peer_dir", "tree"]
  assert cmd[cmd.index("--batch") + 1] == "256" and cmd[cmd.index("--warmup") + 1] == "3"
  assert cmd[-4:] == ["--device", "cuda", "--autocast", "bf16"]
