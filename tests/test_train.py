"""Pretraining on the embedded real PTB-XL subset: 8 fake devices, 1 vs 8 devices, exact
resume, the same bits from another process."""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import logging as absl_logging

from cgdmer_jax import cli
from cgdmer_jax import overrides as overrides_lib
from cgdmer_jax.data import reader
from cgdmer_jax.evaluators import val_zero_shot
from cgdmer_jax.train import accumulate
from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import checks
from cgdmer_jax.train import loop
from cgdmer_jax.train import sharding
from cgdmer_jax.train import val_loss
from configs import pretrain
from data_pipelines import signal
from data_pipelines import write
from tests import conftest

# The small-run settings of these tests, as `--config.<key>` overrides.
TINY = {"data.batch_size": 16, "data.eval_batch_size": 16, "data.shuffle_buffer": 64,
        "total_steps": 40, "optim.warmup_steps": 5, "log_every_steps": 5,
        "checkpoint.every_steps": 20, "eval_every_steps": 0}


def tiny_config(data_dir, **overrides):
  config = pretrain.get_config("size=tiny")
  if data_dir is not None:
    config.data.dir = str(data_dir)
  return overrides_lib.apply(config, {**TINY, **overrides})


def read_metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def params_of(workdir, config):
  loop.apply_dataset_info(config, reader.load_info(config.data.dir))
  mesh = sharding.make_mesh(config)
  s = loop.setup(config, mesh)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", every_steps=1, keep=None)
  state, meta = ckpt.restore(ckpt.latest_step(), s.abstract_state, s.state_shardings)
  ckpt.close()
  return jax.device_get(state["params"]), meta


def test_bad_config_fails_before_compiling(tmp_path, ptbxl_tfrecords):
  config = tiny_config(ptbxl_tfrecords, **{"model.patch_size": 7})
  with pytest.raises(checks.ConfigError, match="patch_size"):
    loop.train_and_evaluate(config, str(tmp_path / "w"))
  config = tiny_config(ptbxl_tfrecords, **{"data.fs": 500})
  config.model.patch_size = 50
  with pytest.raises(checks.ConfigError, match="100 Hz"):
    loop.train_and_evaluate(config, str(tmp_path / "w2"))
  config = tiny_config(None)
  with pytest.raises(checks.ConfigError, match="data.dir"):
    checks.check(config)



def test_resume_with_other_model_settings_names_them(tmp_path, ptbxl_tfrecords):
  """A run made with other model settings (here: before a default changed) is not resumed
  into a mismatching parameter tree: the differing keys are named and config.json is kept."""
  old = tiny_config(ptbxl_tfrecords, **{"model.patch_norm": False, "model.patch_stats": False})
  loop.apply_dataset_info(old, reader.load_info(old.data.dir))
  saved = json.loads(old.to_json_best_effort())
  del saved["model"]["patch_norm"]          # written before the setting existed
  saved["model"]["ecg_depth"] = 2
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "20").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(saved))
  with pytest.raises(checks.ConfigError) as e:
    loop.train_and_evaluate(tiny_config(ptbxl_tfrecords), str(workdir))
  # Absent from that run's config: upgraded to what such runs were built with (no patch norm).
  assert "model.patch_norm: the run has False, this config True" in str(e.value)
  assert "--config.model.patch_norm=False" in str(e.value)
  assert "--config.model.ecg_depth=2" in str(e.value)
  assert json.loads((workdir / "config.json").read_text()) == saved
  # A run trained on z-scored input is not resumed on millivolts.
  zscored = tiny_config(ptbxl_tfrecords)
  loop.apply_dataset_info(zscored, reader.load_info(zscored.data.dir))
  saved = json.loads(zscored.to_json_best_effort())
  saved["data"]["normalize"] = "zscore"
  (workdir / "config.json").write_text(json.dumps(saved))
  with pytest.raises(checks.ConfigError, match="--config.data.normalize=zscore"):
    checks.check_resume(zscored, workdir)
  # Runtime knobs may change on resume.
  runtime = tiny_config(ptbxl_tfrecords, **{"model.remat": True})
  loop.apply_dataset_info(runtime, reader.load_info(runtime.data.dir))
  saved = json.loads(runtime.to_json_best_effort())
  saved["model"]["remat"] = False
  (workdir / "config.json").write_text(json.dumps(saved))
  checks.check_resume(runtime, workdir)

@pytest.mark.slow
def test_short_run_on_8_devices_trains_and_checkpoints(tmp_path, ptbxl_tfrecords, caplog):
  assert jax.device_count() == 8
  caplog.set_level(logging.INFO)
  # A command run in-process earlier in this worker may have left absl at WARNING.
  absl_logging.set_verbosity(absl_logging.INFO)
  workdir = tmp_path / "run"
  config = tiny_config(ptbxl_tfrecords, eval_every_steps=40,
                       **{"best.zero_shot_task": "ptbxl_super",
                          "best.data_root": str(conftest.EMBEDDED),
                          "diagnostics.every_steps": 20, "loss.ramp_steps.disentangle": 20,
                          # The static weights, so the logged weight is the ramp's alone
                          # (balanced runs: tests/test_balance.py).
                          "loss.balance": "none"})
  out = loop.train_and_evaluate(config, str(workdir),
                                make_scorer=val_zero_shot.scorer_factory(config))
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert rows[0]["step"] == 5 and rows[-1]["step"] == 40
  assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], rows
  for key in ("loss/ecg", "loss/text", "loss/contrastive", "loss/disentangle", "lr",
              "grad_norm", "examples_per_s", "step_time_s"):
    assert key in rows[-1], key
  # The ramp-in weight is logged while it rises, then stays at loss.disentangle.
  assert rows[0]["weight/disentangle"] < 0.5 * config.loss.disentangle
  assert rows[-1]["weight/disentangle"] == pytest.approx(config.loss.disentangle)
  # Per-term gradient diagnostics on the steps they were asked for, finite.
  diag = {r["step"]: r for r in rows if "grad_norm/contrastive/shared" in r}
  assert sorted(diag) == [20, 40], sorted(diag)
  for key in ("grad_norm/ecg/ecg_backbone", "grad_norm/text/text_backbone",
              "grad_norm/disentangle/shared", "grad_cos/ecg~contrastive/shared"):
    assert np.isfinite(diag[40][key]), key
  assert "val/loss" in out and np.isfinite(out["val/loss"])
  # The val masked-ECG loss split by the masking step that hid each patch.
  for kind in ("random", "lead", "time"):
    assert np.isfinite(out[f"val/ecg_mse/{kind}"]) and out[f"val/ecg_mse/{kind}"] > 0, kind
  # One console line per validation: the val losses and the model-selection AUC.
  (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 40: val")]
  assert "val loss" in line and "ecg " in line and "val zero-shot AUC" in line, line
  # Zero-shot model selection on the val split kept the best parameters.
  assert 0.0 <= out["val/zero_shot_auc"] <= 1.0
  # Orbax keeps one step under best/ (its best_fn on the score), with params and meta.
  (kept,) = [p for p in (workdir / "best").iterdir() if p.name.isdigit()]
  best = json.loads((kept / "meta" / "metadata").read_text())
  assert best["step"] == 40 == int(kept.name)
  assert best["score"] == pytest.approx(out["val/zero_shot_auc"])
  assert (kept / "params").is_dir()
  assert checkpointing.resolve_step_dir(workdir / "best") == kept
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == [20, 40]
  assert (workdir / "config.json").exists()
  assert list((workdir / "tensorboard").iterdir())


def test_one_device_and_eight_devices_agree(ptbxl_tfrecords):
  config = tiny_config(ptbxl_tfrecords)
  loop.apply_dataset_info(config, reader.load_info(config.data.dir))
  local = next(reader.train_batches(config.data.dir, global_batch_size=16, seed=0))
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(config, devices=devices)
    s = loop.setup(config, mesh)
    with jax.set_mesh(mesh):
      state = s.init_state()
      batch = sharding.global_batch(local, mesh)
      fn = jax.jit(accumulate.make_loss_and_grads_fn(s.graphdef, config))
      (loss, _), grads = fn(state["params"], batch, jax.random.key(3))
      results.append((float(loss), jax.device_get(grads)))
  (l1, g1), (l8, g8) = results
  # Same math, different reduction order across devices: float32 round-off only.
  assert abs(l1 - l8) <= 1e-5 * abs(l1), (l1, l8)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


@pytest.mark.slow
def test_resume_is_exact(tmp_path, ptbxl_tfrecords):
  # Every run shares total_steps (the LR schedule) so the compiled step is the same program.
  straight = tmp_path / "straight"
  config = tiny_config(ptbxl_tfrecords, steps_per_run=12, **{"checkpoint.every_steps": 100})
  loop.train_and_evaluate(config, str(straight))
  split = tmp_path / "split"
  for _ in range(2):
    config = tiny_config(ptbxl_tfrecords, steps_per_run=6, **{"checkpoint.every_steps": 100})
    loop.train_and_evaluate(config, str(split))
  pa, meta_a = params_of(straight, tiny_config(ptbxl_tfrecords))
  pb, meta_b = params_of(split, tiny_config(ptbxl_tfrecords))
  assert meta_a["step"] == meta_b["step"] == 12
  # Bit-identical: same data stream from the resumed step, RNG = fold_in(seed, step),
  # deterministic XLA:CPU kernels.
  for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_another_process_trains_the_same_bits(tmp_path, ptbxl_tfrecords):
  """The command line in a fresh process (another hash seed) ends where this process does."""
  overrides = {"steps_per_run": 12, "checkpoint.every_steps": 100}
  here = tmp_path / "here"
  loop.train_and_evaluate(tiny_config(ptbxl_tfrecords, **overrides), str(here))
  there = tmp_path / "there"
  flags = [f"--config.{k}={v}" for k, v in
           {"data.dir": ptbxl_tfrecords, **TINY, **overrides}.items()]
  env = dict(os.environ, PYTHONHASHSEED="12345")
  command = [sys.executable, "-m", "cgdmer_jax.main", "--config=configs/pretrain.py:size=tiny",
             f"--workdir={there}", *flags]
  res = subprocess.run(command, cwd=conftest.REPO, env=env, capture_output=True, text=True,
                       timeout=600)
  # Stopped by steps_per_run before total_steps: the status a scheduler requeues on.
  assert res.returncode == cli.RESUBMIT, res.stderr[-3000:]
  assert "step 12 of 40: rerun the same command" in res.stderr

  def losses(w):
    return [(r["step"], r["loss"]) for r in read_metrics(w) if "loss" in r]

  assert [step for step, _ in losses(here)] == [5, 10, 12]
  assert losses(here) == losses(there)
  pa, meta_a = params_of(here, tiny_config(ptbxl_tfrecords))
  pb, meta_b = params_of(there, tiny_config(ptbxl_tfrecords))
  assert meta_a["step"] == meta_b["step"] == 12
  for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(a, b)
  # A run already at its last step finishes at once with status 0.
  done = subprocess.run([*command, "--config.total_steps=12"], cwd=conftest.REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == cli.OK, done.stderr[-3000:]


@pytest.mark.slow
def test_nan_loss_stops_with_last_good_checkpoint(tmp_path, ptbxl_tfrecords):
  workdir = tmp_path / "nan"
  config = tiny_config(ptbxl_tfrecords, steps_per_run=5, **{"checkpoint.every_steps": 5})
  loop.train_and_evaluate(config, str(workdir))
  # An absurd learning rate drives the loss to inf/nan within a few steps.
  config = tiny_config(ptbxl_tfrecords, **{"checkpoint.every_steps": 5, "optim.lr": 1e9,
                                           "optim.clip_norm": 0.0})
  with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step"):
    loop.train_and_evaluate(config, str(workdir))
  params, meta = params_of(workdir, tiny_config(ptbxl_tfrecords))
  assert meta["step"] < 40
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params)), meta


def test_eval_batch_size_checked_before_training(tmp_path, ptbxl_tfrecords):
  """An eval batch the 8 devices cannot split fails up front, not at the first evaluation."""
  workdir = tmp_path / "w"
  config = tiny_config(ptbxl_tfrecords, total_steps=2, eval_every_steps=2,
                       **{"data.eval_batch_size": 12})
  with pytest.raises(checks.ConfigError, match="eval_batch_size=12 .* 8 devices"):
    loop.train_and_evaluate(config, str(workdir))
  assert not (workdir / "checkpoints").exists()


def test_dataset_without_reports_names_the_variants_that_work(tmp_path):
  """CPSC2018 has no reports (vocab 0): the full model stops before compiling, naming
  the variants that train on ECGs alone; those pass the check."""
  data = tmp_path / "cpsc"
  write.build(write.BuildConfig(source="cinc", input=str(conftest.EMBEDDED / "cpsc2018" / "wfdb"),
                                output=str(data), signal=signal.Config(fs=100), workers=1,
                                progress=False))
  workdir = tmp_path / "w"
  with pytest.raises(checks.ConfigError, match="no reports") as e:
    loop.train_and_evaluate(tiny_config(data), str(workdir))
  assert "variant=ecg_mask_only" in str(e.value) and "variant=full" not in str(e.value)
  assert not (workdir / "checkpoints").exists()
  checks.check_reports(pretrain.get_config("size=tiny,variant=ecg_mask_only"), 0,
                              str(data))


def test_val_loss_weights_batches_by_valid_rows(ptbxl_tfrecords):
  """A padded last batch counts by its valid rows in a per-example term, not as much as a full
  batch; in a batch-coupled term (and the total) it does not count at all."""
  config = tiny_config(ptbxl_tfrecords, **{"data.eval_batch_size": 16})
  loop.apply_dataset_info(config, reader.load_info(config.data.dir))
  mesh = sharding.make_mesh(config)
  s = loop.setup(config, mesh)
  eval_step = jax.jit(val_loss.make_eval_step(s.graphdef, config))
  with jax.set_mesh(mesh):
    params = s.init_state()["params"]
    got = val_loss.evaluate_loss(params, eval_step, config, mesh, "val")
    mets, rows = [], []
    for local in val_loss.eval_stream(config, "val"):
      mets.append(val_loss.fetch(eval_step(params, sharding.global_batch(local, mesh))))
      rows.append(int(local["mask"].sum()))
  assert len(set(rows)) > 1, rows  # a padded last batch, or the test shows nothing
  ecg = [m["loss/ecg"] for m in mets]
  want = sum(v * n for v, n in zip(ecg, rows)) / sum(rows)
  assert abs(want - float(np.mean(ecg))) > 1e-5, (ecg, rows)
  assert got["val/loss/ecg"] == pytest.approx(want, rel=1e-5)
  full = [(m, n) for m, n in zip(mets, rows) if n == 16]
  assert 0 < len(full) < len(mets)
  for key in ("loss", "loss/contrastive"):
    assert got[f"val/{key}"] == pytest.approx(
        sum(m[key] * n for m, n in full) / sum(n for _, n in full), rel=1e-5)
