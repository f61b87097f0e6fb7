"""Real multi-process runs on localhost: two jax.distributed processes, SIGTERM and SIGKILL."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from cgdmer_jax import cli
from tests import conftest

REPO = conftest.REPO


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _main_cmd(workdir, data_dir, *extra):
  return [sys.executable, "-m", "cgdmer_jax.main", f"--config={REPO}/configs/pretrain.py:size=tiny",
          f"--workdir={workdir}", f"--config.data.dir={data_dir}",
          "--config.data.batch_size=16", "--config.data.shuffle_buffer=64",
          "--config.optim.warmup_steps=5", "--config.eval_every_steps=0",
          "--config.log_every_steps=1", "--alsologtostderr", *extra]


def _env(devices: int):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = str(REPO)
  return env


@pytest.mark.slow
def test_two_processes_train_and_agree(tmp_path, ptbxl_tfrecords):
  port = _free_port()
  workdir = tmp_path / "mp"
  procs = [subprocess.Popen(
      _main_cmd(workdir, ptbxl_tfrecords, "--config.total_steps=6",
                "--config.checkpoint.every_steps=3", "--multiprocess=on",
                f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={i}"),
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=600)
    outs.append(out)
    assert p.returncode == 0, out[-3000:]
  digests = []
  for i, out in enumerate(outs):
    assert f"process {i}/2" in out, out[-2000:]
    m = re.search(r"process %d/2 ends at step 6; params digest ([0-9a-f]{64})" % i, out)
    assert m, out[-2000:]
    digests.append(m.group(1))
  assert digests[0] == digests[1]
  # 2 processes x 2 devices = one 4-device mesh.
  assert "4 global devices" in outs[0]
  assert (workdir / "checkpoints" / "6").exists()


def _wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"process ended early:\n{proc.stdout.read()[-3000:]}")
    time.sleep(0.2)
  proc.kill()
  raise AssertionError("timed out")


def _logged_steps(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [int(m) for m in re.findall(r'"step": (\d+)', path.read_text())]


def _checkpoints(workdir):
  root = workdir / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


@pytest.mark.slow
def test_sigterm_saves_current_step_and_sigkill_resumes_last_interval(tmp_path, ptbxl_tfrecords):
  # A relative --workdir (run from tmp_path), as a user would type it.
  workdir = tmp_path / "pre"
  common = ("--config.total_steps=10000", "--config.checkpoint.every_steps=5")
  proc = subprocess.Popen(_main_cmd("pre", ptbxl_tfrecords, *common), cwd=tmp_path, env=_env(8),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for(lambda: max(_logged_steps(workdir), default=0) >= 7, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == cli.RESUBMIT, out[-3000:]  # stopped early: rerun to continue
  assert "preempted: checkpoint saved at step" in out
  stopped = int(re.search(r"preempted: checkpoint saved at step (\d+)", out).group(1))
  assert stopped >= 7 and max(_checkpoints(workdir)) == stopped

  # The next start resumes exactly there; SIGKILL it after one more interval checkpoint.
  proc = subprocess.Popen(_main_cmd("pre", ptbxl_tfrecords, *common), cwd=tmp_path, env=_env(8),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  next_interval = (stopped // 5 + 1) * 5
  _wait_for(lambda: next_interval in _checkpoints(workdir)
            and max(_logged_steps(workdir)) >= next_interval + 2, proc)
  proc.send_signal(signal.SIGKILL)
  out, _ = proc.communicate(timeout=60)
  assert f"starting at step {stopped} (workdir)" in out
  killed_at = max(_logged_steps(workdir))
  last = max(_checkpoints(workdir))
  assert last % 5 == 0 and last < killed_at

  # After SIGKILL the next start resumes from the last complete interval checkpoint.
  out = subprocess.run(_main_cmd("pre", ptbxl_tfrecords, *common, "--config.steps_per_run=1"),
                       cwd=tmp_path, env=_env(8), capture_output=True, text=True, timeout=600)
  assert out.returncode == cli.RESUBMIT, out.stdout[-2000:] + out.stderr[-2000:]
  assert f"starting at step {last} (workdir)" in out.stdout + out.stderr
