"""The benchmark: XLA's FLOP count agrees with the analytic count; the step benchmark and the
command line run on fake CPU devices; the peak table and the ablation parsing."""

import json
import os
import subprocess
import sys

import jax
import pytest

from cgdmer_jax import overrides
from cgdmer_jax.perf import flops
from cgdmer_jax.perf import step_timing
from configs import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(batch=4, **model):
  config = pretrain.get_config("size=tiny")
  config.data.batch_size = batch
  for k, v in model.items():
    config.model[k] = v
  return config


@pytest.mark.parametrize("variant", ["full", "ecg_mask_only"])
def test_xla_flops_agree_with_analytic_count(variant):
  # Scanned layers (the default) are counted through the unrolled twin.
  config = pretrain.get_config(f"size=tiny,variant={variant}")
  config.data.batch_size = 4
  xla = flops.xla_step_flops(config)
  analytic = flops.analytic_step_flops(config, config.data.batch_size)["total"]
  # XLA also counts element-wise work (LayerNorm, GELU, softmax, AdamW): above, within 10%.
  assert 1.0 <= xla["flops"] / analytic < 1.10, (xla, analytic)
  # Its matmuls alone are what the analytic count counts.
  assert abs(xla["dot_flops"] / analytic - 1) < 0.02, (xla, analytic)


def test_xla_flops_agree_with_analytic_count_bert_tower_with_frozen_layers():
  config = pretrain.get_config("size=tiny,text=bert")
  config.data.batch_size = 4
  config.model.vocab_size = 500
  config.model.text_width = 64
  config.model.text.bert = dict(config.model.text.bert, vocab_size=500, hidden_size=64,
                                num_hidden_layers=3, num_attention_heads=4,
                                intermediate_size=96)
  config.model.text.freeze_layers = 1
  xla = flops.xla_step_flops(config)
  analytic = flops.analytic_step_flops(config, config.data.batch_size)
  assert 1.0 <= xla["flops"] / analytic["total"] < 1.10, (xla, analytic)
  assert abs(xla["dot_flops"] / analytic["total"] - 1) < 0.02, (xla, analytic)
  config.model.text.freeze_layers = 0
  assert flops.analytic_step_flops(config, 4)["total"] > analytic["total"]


def test_step_benchmark_on_two_devices(tmp_path):
  config = _tiny(batch=4)
  # The FLOP count is the test above; here the step's own compile only.
  r = step_timing.run_step_benchmark(config, jax.devices()[:2], steps=2, warmup=1,
                                     xla_flops=False, profile_dir=str(tmp_path / "profile"),
                                     profile_steps=1)
  assert r["devices"] == 2 and r["global_batch"] == 4 and r["per_device_batch"] == 2
  assert r["step_s_p50"] > 0 and r["examples_per_s"] > 0 and r["tokens_per_s"] > 0
  assert r["flops_per_step_analytic"] > 0 and r["achieved_tflops"] > 0
  assert r["mfu"] is None  # no peak is known for a CPU
  assert r["peak_memory_bytes"] > 0
  traces = [f for _, _, fs in os.walk(tmp_path / "profile") for f in fs]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  assert any(f.endswith("trace.json.gz") for f in traces), traces


def test_peak_table_and_mfu():
  assert flops.peak_flops_per_device("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
  assert flops.peak_flops_per_device("NVIDIA H100 PCIe", "float32") == 378e12
  assert flops.peak_flops_per_device("TPU v5 lite", "bfloat16") == 197e12
  assert flops.peak_flops_per_device("TPU v5", "bfloat16") == 459e12
  assert flops.peak_flops_per_device("cpu", "float32") is None
  assert flops.peak_flops_per_device("cpu", "float32", override_tflops=2.0) == 2e12
  assert flops.mfu(1e12, 1.0, 2, 1e12) == pytest.approx(0.5)
  assert flops.mfu(1e12, 1.0, 2, None) is None


def test_ablation_parsing_and_overrides():
  name, ov = step_timing.parse_ablation("loop:model.scan_layers=false,model.attention=xla")
  assert name == "loop" and ov == {"model.scan_layers": "false", "model.attention": "xla"}
  c = overrides.apply(_tiny(), ov)
  assert c.model.scan_layers is False and c.model.attention == "xla"
  with pytest.raises(ValueError):
    step_timing.parse_ablation("no_overrides")


def test_command_line_makes_fake_devices(tmp_path):
  """The CLI on 1 and 2 fake CPU devices from a process that has a single CPU device."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = tmp_path / "bench.json"
  cmd = [sys.executable, "-m", "cgdmer_jax.benchmark",
         "--config=configs/pretrain.py:size=tiny,variant=ecg_mask_only",
         "--config.data.batch_size=4", "--devices=1,2", "--steps=1", "--warmup=0",
         "--xla_flops=false", f"--out={out}"]
  res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads(out.read_text())
  assert [r["devices"] for r in report["runs"]] == [1, 2]
  assert [r["global_batch"] for r in report["runs"]] == [2, 4]  # weak scaling
  assert "scaling efficiency" in res.stdout
  assert report["params"]["total"] > report["params"]["ecg encoder"] > 0
  assert "parameters: " in res.stdout
