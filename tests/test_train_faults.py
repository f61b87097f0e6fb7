"""Faults a long run meets, at the trainer: a damaged shard, an unreadable latest checkpoint,
a second trainer on the workdir, a kill while a checkpoint is written.

The training runs share total_steps=40 and the tiny config of test_train.py, so they compile
the same step program (persistent compilation cache)."""

import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdmer_jax.data import shard_scan
from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import loop
from cgdmer_jax.train import workdir_lock
from configs import pretrain
from tests import conftest
from tests.test_reader_faults import damage
from tests.test_train import params_of
from tests.test_train import read_metrics
from tests.test_train import tiny_config


def _steps(workdir, folder="checkpoints"):
  return sorted(int(p.name) for p in (workdir / folder).iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_damaged_shard_saves_state_and_skip_counts_records(ptbxl_tfrecords, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(ptbxl_tfrecords, data)
  shard = data / "cgdmer_ecg-train.tfrecord-00001-of-00004"
  offsets = [damage(shard, 40), damage(data / "cgdmer_ecg-train.tfrecord-00003-of-00004", 44)]
  workdir = tmp_path / "run"
  config = tiny_config(data)  # checkpoints every 20 steps: none before the damage is met
  with pytest.raises(shard_scan.DamagedShardError) as e:
    loop.train_and_evaluate(config, str(workdir))
  assert "damaged TFRecord shard" in str(e.value) and "on_corrupt=skip" in str(e.value)
  assert e.value.damage.offset in offsets
  # Every finished step is kept: the state at the last one was saved before the error.
  saved = _steps(workdir)
  assert len(saved) == 1 and 0 < saved[0] < 12, saved
  _, meta = params_of(workdir, tiny_config(data))
  assert meta["step"] == saved[0]
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
  # Resumed with on_corrupt=skip: past two epochs, both damaged records counted, once each.
  out = loop.train_and_evaluate(tiny_config(data, steps_per_run=24,
                                             **{"data.on_corrupt": "skip"}), str(workdir))
  assert out["data/damaged_records"] == 2
  resumed = [r for r in read_metrics(workdir) if "loss" in r and r["step"] > saved[0]]
  assert [r["step"] for r in resumed] == [10, 15, 20, 25, 30], resumed
  assert resumed[-1]["data/damaged_records"] == 2


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back(ptbxl_tfrecords, tmp_path, caplog):
  workdir = tmp_path / "run"
  loop.train_and_evaluate(tiny_config(ptbxl_tfrecords, steps_per_run=10,
                                       **{"checkpoint.every_steps": 5}), str(workdir))
  assert _steps(workdir) == [5, 10]
  files = [p for p in (workdir / "checkpoints" / "10" / "params").rglob("*") if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  largest.write_bytes(b"")  # what a node dying mid-write can leave
  strict = tiny_config(ptbxl_tfrecords, **{"checkpoint.every_steps": 5,
                                            "checkpoint.strict_restore": True})
  with pytest.raises(checkpointing.UnreadableCheckpointError,
                     match="checkpoint step 10 in .* is unreadable"):
    loop.train_and_evaluate(strict, str(workdir))
  assert _steps(workdir) == [5, 10]  # strict: nothing moved
  caplog.set_level(logging.WARNING)
  out = loop.train_and_evaluate(tiny_config(ptbxl_tfrecords, **{"checkpoint.every_steps": 5}),
                                 str(workdir))
  assert "checkpoint step 10 in" in caplog.text and "is unreadable" in caplog.text
  # Kept, not deleted, and out of the way; training went on from step 5 to total_steps.
  aside = workdir / checkpointing.UNREADABLE_DIR / "10" / "params"
  assert (aside / largest.relative_to(workdir / "checkpoints" / "10" / "params")).stat(
      ).st_size == 0
  logged = [r["step"] for r in read_metrics(workdir) if "loss" in r]
  assert logged == [5, 10, 10, 15, 20, 25, 30, 35, 40], logged
  assert out["loss"] > 0 and _steps(workdir)[-1] == 40


def test_second_trainer_refused_and_stale_locks_taken_over(ptbxl_tfrecords, tmp_path, caplog):
  workdir = tmp_path / "busy"
  held = workdir_lock.acquire(workdir)  # a trainer running in this process
  try:
    with pytest.raises(workdir_lock.WorkdirInUseError,
                       match=f"workdir {workdir} in use by pid {os.getpid()} on host "
                             f"{socket.gethostname()} since "):
      loop.train_and_evaluate(tiny_config(ptbxl_tfrecords), str(workdir))
    assert not (workdir / "config.json").exists()  # refused before touching anything
  finally:
    held.release()
  # A trainer killed with SIGKILL leaves its lock behind; its pid is gone.
  killed = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from cgdmer_jax.train import workdir_lock; "
       "workdir_lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)",
       str(workdir)], cwd=conftest.REPO, stdout=subprocess.PIPE, text=True)
  assert killed.stdout.readline().strip() == "held"
  lock = workdir / workdir_lock.LOCK_FILE
  with pytest.raises(workdir_lock.WorkdirInUseError, match=f"pid {killed.pid}"):
    workdir_lock.acquire(workdir)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  caplog.set_level(logging.WARNING)
  workdir_lock.acquire(workdir).release()
  assert f"pid {killed.pid} is not running" in caplog.text
  # A reboot since; another host silent for longer than the stale time; a live other host.
  for change, age, stale in (({"boot_id": "another boot"}, 0, True),
                             ({"host": "node-7"}, 3600, True), ({"host": "node-7"}, 5, False)):
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "then",
              "boot_id": pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
              "start_time": ""}
    lock.write_text(json.dumps(dict(holder, **change)))
    os.utime(lock, (lock.stat().st_mtime - age,) * 2)
    if stale:
      workdir_lock.acquire(workdir).release()
    else:
      with pytest.raises(workdir_lock.WorkdirInUseError, match="on host node-7 since then"):
        workdir_lock.acquire(workdir)
  assert lock.exists()


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from cgdmer_jax.train import checkpointing

    real_rename = atomicity.async_path.rename

    async def dies_before_commit(src, dst):
      # Every file of step 2 is written (its commit_success.txt too): only the final rename
      # of the step folder is missing when the process is killed.
      if os.path.basename(str(dst)) == "2":
        os.kill(os.getpid(), signal.SIGKILL)
      return await real_rename(src, dst)

    atomicity.async_path.rename = dies_before_commit
    ckpt = checkpointing.Checkpointer(sys.argv[1], every_steps=1, keep=None)
    for step in (1, 2):
      ckpt.save(step, {"params": {"w": jnp.full((64, 64), float(step))},
                       "opt_state": {"m": jnp.full((3,), float(step))}}, {"step": step})
      ckpt.wait()
    print("not killed")
""")


def test_kill_during_checkpoint_save_resumes_newest_complete(tmp_path):
  ckpts = tmp_path / "checkpoints"
  run = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(ckpts)], cwd=conftest.REPO,
                       capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == -signal.SIGKILL, run.stderr
  leftovers = [p.name for p in ckpts.iterdir() if not p.name.isdigit()]
  assert any("tmp" in n for n in leftovers), leftovers  # the half-committed step 2
  single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"params": {"w": jax.ShapeDtypeStruct((64, 64), jnp.float32)},
              "opt_state": {"m": jax.ShapeDtypeStruct((3,), jnp.float32)}}
  shardings = jax.tree.map(lambda _: single, abstract)
  ckpt = checkpointing.Checkpointer(ckpts, every_steps=1, keep=None, async_save=False)
  try:
    resumed = checkpointing.initial_state(ckpt, pretrain.get_config("size=tiny"), abstract,
                                          shardings, init_fn=lambda: pytest.fail("scratch"))
    assert (resumed.step, resumed.source) == (1, "workdir")
    np.testing.assert_array_equal(resumed.state["params"]["w"], np.ones((64, 64)))
    # The interrupted step is written again as if it had never started.
    ckpt.save(2, resumed.state, {"step": 2})
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
  finally:
    ckpt.close()
