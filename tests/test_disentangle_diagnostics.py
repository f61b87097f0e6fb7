"""Debiased CKA sees the redundancy `disentangle_loss` misses at batch 32, and the diagnostics
command (`cgdmer_jax.diagnose`, `evaluators/disentanglement.py`) on a trained tiny run."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cgdmer_jax import cli
from cgdmer_jax import losses
from cgdmer_jax import masking
from cgdmer_jax.data import reader
from cgdmer_jax.evaluators import disentanglement
from cgdmer_jax.evaluators import disentanglement_table

REPO = pathlib.Path(__file__).resolve().parents[1]
WIDTH = 64


def _cases(rng, batch, width=WIDTH):
  """x and, for it: a linear copy x W, a noisy copy (noise of the copy's power), independent."""
  x = rng.normal(size=(batch, width))
  w = rng.normal(size=(width, width)) / np.sqrt(width)
  copy = x @ w
  noisy = copy + rng.normal(size=copy.shape) * copy.std()
  rot = x @ np.linalg.qr(rng.normal(size=(width, width)))[0]
  ind = rng.normal(size=(batch, width))
  cases = dict(copy=copy, noisy=noisy, rotation=rot, independent=ind)
  return x.astype(np.float32), {k: v.astype(np.float32) for k, v in cases.items()}


def _measure(fn, batch, seeds):
  out = {}
  for s in range(seeds):
    x, cases = _cases(np.random.default_rng(s), batch)
    for name, y in cases.items():
      out.setdefault(name, []).append(float(fn(x, y)))
  return {k: np.array(v) for k, v in out.items()}


def test_debiased_cka_sees_redundancy_the_old_loss_misses_at_batch_32():
  cka = _measure(jax.jit(losses.debiased_cka), 32, 40)
  old = _measure(jax.jit(losses.disentangle_loss), 32, 40)
  # Measured over 100 seeds (B = 32, width 64): CKA copy 0.70 ± 0.03 (min 0.63), noisy copy
  # 0.44 ± 0.05, rotation 1.00, independent 0.00 ± 0.04 (max 0.15). A Gaussian W is not a
  # rotation: linear CKA of x and x W is tr(WᵀW) / sqrt(D tr((WᵀW)²)) -> 1/sqrt(2).
  assert np.all(cka["rotation"] > 0.999)
  assert 0.65 < cka["copy"].mean() < 0.75 and np.all(cka["copy"] > 0.55)
  assert 0.35 < cka["noisy"].mean() < 0.55
  assert np.abs(cka["independent"]).mean() < 0.1 and abs(cka["independent"].mean()) < 0.03
  assert np.all(cka["copy"] > cka["independent"] + 0.3)
  assert np.mean(cka["noisy"] > cka["independent"]) > 0.95
  # The old loss: copy 0.046, noisy copy 0.039, independent 0.032 = 1/(B-1). Blind: the
  # whole range from independent to a copy is smaller than its noise floor.
  assert abs(old["independent"].mean() - 1 / 31) < 0.005
  assert old["copy"].mean() - old["independent"].mean() < 0.03
  assert old["noisy"].mean() - old["independent"].mean() < 0.03


@pytest.mark.parametrize("batch", [16, 32, 128])
def test_debiased_cka_of_independent_features_is_zero_on_average(batch):
  rng = np.random.default_rng(batch)
  x = rng.normal(size=(256, batch, WIDTH)).astype(np.float32)
  y = rng.normal(size=(256, batch, WIDTH)).astype(np.float32)
  cka = np.asarray(jax.jit(jax.vmap(losses.debiased_cka))(x, y))
  old = np.asarray(jax.jit(jax.vmap(losses.disentangle_loss))(x, y))
  se = cka.std() / np.sqrt(len(cka))
  assert abs(cka.mean()) < 4 * se + 1e-3, (cka.mean(), se)
  # The old loss's floor is 1/(B-1): it shrinks with the batch, from a positive value.
  assert old.mean() == pytest.approx(1 / (batch - 1), rel=0.1)


def _hsic1_float64(k, g):
  n = len(k)
  k, g = k * (1 - np.eye(n)), g * (1 - np.eye(n))
  one = np.ones(n)
  return (np.trace(k @ g) + one @ k @ one * (one @ g @ one) / ((n - 1) * (n - 2))
          - 2 / (n - 2) * one @ k @ g @ one) / (n * (n - 3))


def test_debiased_cka_matches_a_float64_reference_and_is_float32_safe():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 24))
  y = x[:, :16] + rng.normal(size=(32, 16))
  k, g = x @ x.T, y @ y.T
  want = _hsic1_float64(k, g) / np.sqrt(_hsic1_float64(k, k) * _hsic1_float64(g, g))
  got = float(losses.debiased_cka(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
  assert got == pytest.approx(want, abs=1e-4)
  # A large offset, a scale and a rotation change nothing (features are centred first).
  q = np.linalg.qr(rng.normal(size=(16, 16)))[0]
  moved = float(losses.debiased_cka(jnp.asarray(x + 1e3, jnp.float32),
                                    jnp.asarray(100 * y @ q, jnp.float32)))
  assert moved == pytest.approx(want, abs=1e-3)
  # Invalid rows count for nothing; constant features or n < 4 give 0, not NaN.
  pad = np.concatenate([x, rng.normal(size=(8, 24))]).astype(np.float32)
  pad_y = np.concatenate([y, 1e3 * rng.normal(size=(8, 16))]).astype(np.float32)
  valid = np.arange(40) < 32
  assert float(jax.jit(losses.debiased_cka)(pad, pad_y, valid)) == pytest.approx(want, abs=1e-4)
  assert float(losses.debiased_cka(np.ones((32, 4), np.float32), y.astype(np.float32))) == 0
  assert float(losses.debiased_cka(x[:3].astype(np.float32), y[:3].astype(np.float32))) == 0


def test_shuffled_pairing_is_the_chance_level():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(320, 8)).astype(np.float32)
  stats = disentanglement.batch_statistics(x, x.copy(), 32, seed=0)
  assert stats["batches"] == 10 and stats["chance_loss"] == pytest.approx(1 / 31)
  # Identical shared and specific: 1/8 + (7/8)/(B-1) for the loss, CKA 1; shuffled: chance.
  assert stats["loss"]["real"]["mean"] == pytest.approx(1 / 8 + 7 / 8 / 31, rel=0.15)
  assert stats["loss"]["shuffled"]["mean"] == pytest.approx(1 / 31, rel=0.2)
  assert stats["cka"]["real"]["mean"] > 0.999
  assert abs(stats["cka"]["shuffled"]["mean"]) < 0.05
  assert "absent" in disentanglement.batch_statistics(x[:20], x[:20], 32, seed=0)


def test_effective_rank_counts_directions():
  rng = np.random.default_rng(2)
  basis = np.linalg.qr(rng.normal(size=(32, 3)))[0].T  # 3 orthonormal directions in 32-D
  coeff = np.linalg.qr(rng.normal(size=(2000, 3)))[0]  # orthonormal columns: equal variance
  assert disentanglement.effective_rank(coeff @ basis) == pytest.approx(3.0, abs=0.05)
  assert disentanglement.effective_rank(rng.normal(size=(4000, 32))) > 0.95 * 32
  assert disentanglement.effective_rank(np.ones((10, 4))) == 0.0
  s = disentanglement.space_summary(rng.normal(size=(500, 6)) * np.arange(1, 7))
  assert s["width"] == 6 and s["std_min"] < s["std_median"] < s["std_max"]


def test_report_of_a_model_without_a_report_tower_names_what_is_absent():
  rng = np.random.default_rng(3)
  pooled = {"ecg/shared": rng.normal(size=(64, 8)), "ecg/specific": rng.normal(size=(64, 8)),
            "has_report": np.zeros(64, bool)}
  res = disentanglement.summarize(pooled, 32, seed=0)
  for part in (res["per_batch"]["text"], res["spaces"]["text/shared"],
               res["ridge"]["ecg/shared"], res["ablation"]["ecg_mse"],
               res["ablation"]["text_ce"]):
    assert "absent" in part
  assert res["per_batch"]["ecg"]["batches"] == 2
  assert "absent" in disentanglement_table.format_table({**res, "checkpoint": "c", "split": "val",
                                            "seed": 0, "batch_size": 32})


def _first_val_batch(data_dir):
  batch = next(iter(reader.eval_batches(data_dir, split="val", global_batch_size=32,
                                        process_index=0, process_count=1)))
  return {k: batch[k] for k in disentanglement.MODEL_KEYS}


def test_ablating_a_branch_the_head_does_not_read_changes_nothing(quick):
  config, graphdef, params, _ = disentanglement.load(quick["pretrain"], None)
  model = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))  # `params` stays as trained
  S = model.ecg_decoder.in_proj.kernel[...].shape[0] - config.model.ecg_width
  # Heads whose input projection ignores the specific half of [shared, specific].
  for head in (model.ecg_decoder, model.text_head):
    head.in_proj.kernel[...] = head.in_proj.kernel[...].at[S:].set(0.0)
  _, blind = nnx.split(model, nnx.Param)
  batch = _first_val_batch(quick["data"])
  masks = masking.sample_masks(jax.random.key(0), batch, config)

  @jax.jit
  def errors(p):
    return disentanglement.head_errors(nnx.merge(graphdef, p), batch, masks, config)

  @jax.jit
  def val_terms(p):  # what the trainer's val pass computes on the same masks
    _, mets = losses.total(nnx.merge(graphdef, p)(batch, masks), batch, masks, config)
    return {"ecg_mse": mets["loss/ecg"], "text_ce": mets["loss/text"]}

  got, base = jax.device_get(errors(blind)), jax.device_get(errors(params))
  terms = jax.device_get(val_terms(params))
  for head in ("ecg_mse", "text_ce"):
    assert got[f"{head}/none"] != pytest.approx(base[f"{head}/none"], rel=1e-5)  # blinded
    assert got[f"{head}/specific"] == pytest.approx(got[f"{head}/none"], rel=1e-5)
    # ... and what it reads does change it (a 10-step model: by little, far above rounding).
    assert abs(got[f"{head}/shared"] / got[f"{head}/none"] - 1) > 1e-4
    assert base[f"{head}/none"] == pytest.approx(terms[head], rel=1e-5)


def test_diagnose_writes_every_key(quick, tmp_path):
  res = disentanglement.diagnose(quick["pretrain"], batch_size=8, progress=False)
  disentanglement.write_json(res, tmp_path / "out" / "d.json")
  stored = json.loads((tmp_path / "out" / "d.json").read_text())
  assert set(stored) >= {"workdir", "checkpoint", "split", "batch_size", "records",
                         "records_with_report", "per_batch", "whole_split", "spaces",
                         "ablation", "ridge"}
  assert stored["records"] >= 16 and stored["batch_size"] == 8
  for mod in ("ecg", "text"):
    b = stored["per_batch"][mod]
    assert {"loss", "cka", "batches", "chance_loss"} <= set(b) and b["batches"] >= 2
    assert set(b["loss"]) == set(b["cka"]) == {"real", "shuffled"}
    assert -1 <= stored["whole_split"][mod]["cka"] <= 1
  assert set(stored["spaces"]) == set(disentanglement.SPACES)
  assert all(1 <= s["effective_rank"] <= s["width"] for s in stored["spaces"].values())
  for head in ("ecg_mse", "text_ce"):
    assert {"model", "specific_mean", "shared_mean"} <= set(stored["ablation"][head])
  assert set(stored["ridge"]) == {"ecg/shared", "ecg/specific"}
  assert all(np.isfinite(r["r2"]) for r in stored["ridge"].values())
  table = disentanglement_table.format_table(res)
  assert "debiased CKA" in table and "ecg/specific" in table


def test_a_folder_that_is_not_a_workdir_exits_2_with_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  res = subprocess.run([sys.executable, "-m", "cgdmer_jax.diagnose", f"--workdir={tmp_path}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
  assert res.returncode == cli.USAGE, res.stderr[-2000:]
  assert len(errors) == 1 and "not a training workdir" in errors[0]
  assert "Traceback" not in res.stderr
