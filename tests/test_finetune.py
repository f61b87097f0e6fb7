"""Full fine-tuning (`python -m cgdmer_jax.finetune`, cgdmer_jax/finetuning/): it learns, it
resumes exactly, it reads a user's own labelled folder, it refuses bad input in one line, and
each weight learns at its layer's rate (frozen ones not at all)."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from cgdmer_jax import cli
from cgdmer_jax import objective
from cgdmer_jax.evaluators import records
from cgdmer_jax.evaluators import report
from cgdmer_jax.evaluators import stored
from cgdmer_jax.evaluators import tasks
from cgdmer_jax.finetuning import config as config_lib
from cgdmer_jax.finetuning import data
from cgdmer_jax.finetuning import loop
from cgdmer_jax.finetuning import model
from cgdmer_jax.finetuning import runner
from cgdmer_jax.train import workdir_config
from data_pipelines import signal

REPO = pathlib.Path(__file__).resolve().parents[1]
# Tiny settings: half of the embedded PTB-XL train split (95 ECGs, 2 steps an epoch).
CONFIG = config_lib.FinetuneConfig(epochs=3, patience=3, batch_size=64, lr=3e-3,
                                   warmup_epochs=0.5, min_steps_per_epoch=1)
RUN = runner.Run(split="test", resamples=20, config=CONFIG)
FRACTION = 0.5


def _cell(results, pct="50", feature="shared"):
  return results["tasks"]["ptbxl_super"]["linear_probe"]["finetune"][feature][pct]


def _finetune(quick, data_root, out, cache, **kwargs):
  return runner.finetune_models([str(quick["pretrain"])], task_names=["ptbxl_super"],
                                fractions=[FRACTION], data_root=data_root, out=out,
                                cache_dir=cache, progress=False, **{"run": RUN, **kwargs})


@pytest.fixture(scope="module")
def straight(quick, embedded_data, tmp_path_factory):
  """One uninterrupted fine-tune of the embedded ptbxl_super at 50 % of the labels."""
  root = tmp_path_factory.mktemp("finetune")
  results, done = _finetune(quick, embedded_data, root / "out", root / "cache")
  assert done
  return root, results[0]


def test_finetuning_beats_its_own_start(straight):
  root, res = straight
  cell = _cell(res)
  curve = cell["val_curve"]
  assert len(curve) == cell["epochs_run"] + 1 == CONFIG.epochs + 1
  assert cell["selection"] == "val" and cell["subset"]["train_rows"] == 95
  # val_curve[0]: the val macro AUC before the first update (encoder as pretrained, head at
  # its near-zero init); selection keeps the best epoch, which must be a trained one.
  assert max(curve[1:]) > curve[0] + 0.02, curve
  assert cell["best_epoch"] >= 1 and curve[cell["best_epoch"]] == max(curve)
  assert cell["auc"] is not None and len(cell["_scores"]) == res["tasks"]["ptbxl_super"][
      "counts"]["test"]
  # evaluate's format: the table names the cell and `evaluate --scored` reads the folder back.
  model_dir = root / "out" / res["model"]
  assert "fine-tune 50% shared" in (model_dir / "results.md").read_text()
  back = stored.load(model_dir, split="test", resamples=RUN.resamples, seed=0)
  np.testing.assert_array_equal(_cell(back)["_scores"], _cell(res)["_scores"])
  assert res["finetune"]["layer_decay"] == CONFIG.layer_decay and res["probes"] == ["finetune"]
  assert not (model_dir / "checkpoints").exists()  # a finished cell keeps no checkpoint
  assert report.markdown([res])


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_straight_result(straight, quick, embedded_data,
                                                        tmp_path):
  root, res = straight
  out, cache = tmp_path / "out", root / "cache"  # the same staged records
  cmd = [sys.executable, "-m", "cgdmer_jax.finetune", f"--workdir={quick['pretrain']}",
         "--tasks=ptbxl_super", "--fractions=50", f"--data_root={embedded_data}",
         f"--out={out}", f"--cache_dir={cache}", "--bootstrap=20", "--max_epochs_per_run=1",
         *(f"--{k}={v}" for k, v in dataclasses.asdict(CONFIG).items())]
  p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert p.returncode == cli.RESUBMIT, p.stderr[-3000:]
  ckpt = out / res["model"] / "checkpoints" / "ptbxl_super_50"
  assert ckpt.is_dir() and not (out / "summary.md").exists()
  # A second slice of one epoch, then the rest: the same command, rerun.
  assert _finetune(quick, embedded_data, out, cache, max_epochs_per_run=1) == ([], False)
  results, done = _finetune(quick, embedded_data, out, cache)
  assert done
  a, b = _cell(res), _cell(results[0])
  assert b["val_curve"] == a["val_curve"] and b["best_epoch"] == a["best_epoch"]
  np.testing.assert_array_equal(b["_scores"], a["_scores"])
  assert b["auc"] == a["auc"] and b["interval"] == a["interval"]
  # A finished cell is read back, not recomputed (its stored digest must match).
  again, _ = _finetune(quick, embedded_data, out, cache)
  np.testing.assert_array_equal(_cell(again[0])["_scores"], a["_scores"])
  with pytest.raises(loop.StaleCheckpointError):
    _finetune(quick, embedded_data, out, cache,
              run=dataclasses.replace(RUN, config=dataclasses.replace(CONFIG, seed=1)))


def _custom_csv(embedded_data: pathlib.Path, path: pathlib.Path, *, drop=None, **extra):
  """A labels CSV over some embedded PTB-XL records (paths relative to ptbxl/), one missing."""
  frames = []
  for split, n in (("train", 40), ("val", 12), ("test", 12)):
    t = pd.read_csv(embedded_data / "ptbxl" / "merl_splits" / "super_class" /
                    f"ptbxl_super_class_{split}.csv").head(n)
    frames.append(pd.DataFrame({"record": t["filename_lr"], "split": split,
                                **{c: t[c] for c in ("NORM", "MI", "CD", "STTC")}}))
  df = pd.concat(frames, ignore_index=True)
  df.loc[len(df)] = {"record": "records100/99999/99999_lr", "split": "train", "NORM": 1,
                     "MI": 0, "CD": 0, "STTC": 0}
  for k, v in extra.items():
    df[k] = v
  df.drop(columns=drop or []).to_csv(path, index=False)
  return path


def test_custom_labelled_folder_with_a_lead_subset(quick, embedded_data, tmp_path):
  csv = _custom_csv(embedded_data, tmp_path / "mydata.csv")
  run = runner.Run(split="test", resamples=20, leads=("I", "II"),
                   config=dataclasses.replace(CONFIG, epochs=1, features="concat"))
  results, done = runner.finetune_models(
      [str(quick["export"])], task_names=[], fractions=[1.0],
      records_dir=embedded_data / "ptbxl", labels_csv=csv, out=tmp_path / "out",
      cache_dir=tmp_path / "cache", run=run, progress=False)
  assert done
  res = json.loads((tmp_path / "out" / "export_leads-I-II" / "results.json").read_text())
  assert res["leads"] == ["I", "II"] and res["model"] == "export_leads-I-II"
  entry = res["tasks"]["mydata"]
  assert entry["classes"] == ["NORM", "MI", "CD", "STTC"]
  assert entry["counts"] == {"train": 40, "val": 12, "test": 12}
  assert entry["left_out"]["train"] == [{"row": 40, "reason": "record not found under "
                                         f"{embedded_data / 'ptbxl'}"}]
  cell = entry["linear_probe"]["finetune"]["concat"]["100"]
  assert cell["auc"] is not None and cell["epochs_run"] == 1
  assert results[0]["finetune"]["source"]["kind"] == "export"


def test_bad_inputs_are_one_line_usage_errors(quick, embedded_data, tmp_path):
  # The command: a bad flag value is one `error:` line and exit status 2.
  p = subprocess.run([sys.executable, "-m", "cgdmer_jax.finetune",
                      f"--workdir={quick['pretrain']}", f"--out={tmp_path / 'out'}",
                      f"--data_root={embedded_data}", "--tasks=ptbxl_super", "--leads=I,XX"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
  assert p.returncode == cli.USAGE, p.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: unknown lead set 'I,XX'"), p.stderr
  # A malformed labels CSV: one line naming the problem, raised before any model is loaded
  # (the command prints it as above).
  cases = {
      "no 'split' column": _custom_csv(embedded_data, tmp_path / "a.csv", drop=["split"]),
      "no 'record' column": _custom_csv(embedded_data, tmp_path / "b.csv", drop=["record"]),
      "column 'grade' is not a 0/1 label column (values 1, 2)": _custom_csv(
          embedded_data, tmp_path / "c.csv", grade=[1, 2] * 32 + [1]),
      "unknown split names ['tset']": _custom_csv(embedded_data, tmp_path / "d.csv",
                                                  split=["train"] * 64 + ["tset"]),
      "no row has split 'train'": _custom_csv(embedded_data, tmp_path / "e.csv",
                                              split=["val"] * 65),
  }
  for expected, csv in cases.items():
    with pytest.raises(ValueError) as e:
      runner.finetune_models([str(tmp_path / "no_such_model")], task_names=[],
                             records_dir=embedded_data, labels_csv=csv, out=tmp_path / "o")
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
  good = _custom_csv(embedded_data, tmp_path / "ok.csv")
  with pytest.raises(FileNotFoundError, match="neither a training workdir nor an export"):
    runner.finetune_models([str(tmp_path)], task_names=[], records_dir=embedded_data,
                           labels_csv=good, out=tmp_path / "o")


def _source(quick):
  return model.load_source(quick["pretrain"], "latest")


def _leaf(tree, *path):
  for k in path:
    tree = tree[k]
  return np.asarray(tree)


def test_layer_decay_and_freezing_scale_each_update(quick):
  source = _source(quick)
  depth = int(source.config.model.ecg_depth)
  assert depth == 3 and source.config.model.scan_layers
  net, params = model.build(source, "shared", np.full(5, 0.5), seed=0)
  cfg = dataclasses.replace(CONFIG, layer_decay=0.5, freeze_blocks=1, weight_decay=0.0,
                            warmup_epochs=0, lr=1e-3)
  scales = model.param_scales(params, depth, cfg.layer_decay, cfg.freeze_blocks, "shared")
  qkv = ("encoder", "ecg", "backbone", "blocks", "attn", "qkv", "kernel")
  np.testing.assert_allclose(_leaf(scales, *qkv).ravel(), [0.0, 0.25, 0.5])  # 0.5^(3-i)
  assert _leaf(scales, "encoder", "ecg", "patch_proj", "kernel") == 0  # frozen embedding
  assert _leaf(scales, "encoder", "ecg", "lead_embed") == 0
  assert _leaf(scales, "encoder", "ecg", "backbone", "norm", "scale") == 1
  assert _leaf(scales, "encoder", "disentangle", "shared", "norm", "scale") == 1
  assert _leaf(scales, "encoder", "disentangle", "ecg_specific", "norm", "scale") == 0
  assert _leaf(scales, "encoder", "ecg_proj", "kernel") == 0 and _leaf(scales, "head",
                                                                       "kernel") == 1
  unfrozen = model.param_scales(params, depth, 0.5, 0, "concat")
  assert _leaf(unfrozen, "encoder", "ecg", "patch_proj", "kernel") == 0.5 ** 4
  assert _leaf(unfrozen, "encoder", "disentangle", "ecg_specific", "norm", "scale") == 1

  # One real step: frozen weights bit-identical; Adam's first step moves a trained weight by
  # lr x its scale (|m / sqrt(v)| = 1), so the blocks' largest moves follow the decay.
  tx = model.optimizer(cfg, scales, steps_per_epoch=10)
  train_step, _ = model.steps(net, tx)
  rng = np.random.default_rng(0)
  b = {"ecg": (rng.standard_normal((8, 12, net.num_samples)) * 300).astype(np.int16),
       "valid_len": np.full((8,), net.num_samples, np.int32),
       "lead_mask": np.ones((8, 12), bool), "y": rng.integers(0, 2, (8, 5)).astype(np.float32),
       "weight": np.ones((8,), np.float32)}
  # The head starts near zero: first give it some weight so the encoder gets gradients.
  params["head"]["kernel"] = rng.standard_normal(params["head"]["kernel"].shape).astype(
      np.float32)
  new, _, _ = jax.jit(train_step)(params, tx.init(params), b)
  delta = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)), new, params)
  d = _leaf(delta, *qkv)
  assert not d[0].any(), "a frozen block moved"
  np.testing.assert_allclose([d[1].max(), d[2].max()], [0.25e-3, 0.5e-3], rtol=1e-3)
  for path in (("encoder", "ecg", "patch_proj", "kernel"), ("encoder", "ecg", "lead_embed"),
               ("encoder", "ecg_proj", "kernel"),
               ("encoder", "disentangle", "ecg_specific", "norm", "scale")):
    assert not _leaf(delta, *path).any(), f"{'/'.join(path)} moved"
  np.testing.assert_allclose(_leaf(delta, "head", "kernel").max(), 1e-3, rtol=1e-3)


def test_an_unrolled_stack_gets_one_scale_per_block(quick):
  config = workdir_config.read(quick["pretrain"] / workdir_config.CONFIG_FILE)
  config.model.scan_layers = False
  _, abstract = objective.abstract_init(model.encoder_config(config))
  params = {"encoder": nnx.to_pure_dict(abstract), "head": {"kernel": np.zeros((64, 2))}}
  scales = model.param_scales(params, 3, 0.5, 2, "shared")
  blocks = scales["encoder"]["ecg"]["backbone"]["blocks"]
  assert [float(blocks[i]["fc1"]["kernel"]) for i in range(3)] == [0.0, 0.0, 0.5]
  with pytest.raises(ValueError, match="freeze_blocks"):
    model.param_scales(params, 3, 0.5, 4, "shared")


def test_batches_are_padded_with_zero_weight_rows(quick, embedded_data, tmp_path):
  task = tasks.TASKS["ptbxl_super"]
  td = data.load_task(task, embedded_data, records.locator(task, embedded_data, 100),
                      "absent", tmp_path, signal.Config(fs=100, seconds=10.0, min_leads=1),
                      keep=np.asarray([True] + [False] * 11), splits_needed=("val",),
                      progress=False)
  val = td.splits["val"]
  assert len(val) == 24 and isinstance(val.store.ecg, np.memmap)
  b = data.batch(val, np.asarray([5, 2, 7]), 8, keep=np.asarray([True] + [False] * 11))
  assert b["ecg"].shape == (8, 12, 1000) and b["weight"].tolist() == [1] * 3 + [0] * 5
  np.testing.assert_array_equal(b["ecg"][1, 0], val.store.ecg[val.pos[2], 0])
  assert not b["ecg"][:, 1:].any() and not b["lead_mask"][:, 1:].any()
  np.testing.assert_array_equal(b["y"][:3], val.y[[5, 2, 7]])
  assert os.listdir(tmp_path)  # staged on disk, reused by the next call


def test_a_small_subset_takes_repeated_passes_up_to_the_minimum_steps():
  one = loop.epoch_order(191, 64, 3, seed=0, epoch=0)
  np.testing.assert_array_equal(np.sort(one), np.arange(191))  # one pass, a partial batch
  small = loop.epoch_order(26, 64, 10, seed=0, epoch=1)
  assert len(small) >= 10 * 64 and len(small) % 26 == 0
  np.testing.assert_array_equal(np.bincount(small), np.full(26, len(small) // 26))
  np.testing.assert_array_equal(small, loop.epoch_order(26, 64, 10, seed=0, epoch=1))
  assert not np.array_equal(small, loop.epoch_order(26, 64, 10, seed=0, epoch=2))


def test_selection_never_uses_the_reported_split_nor_a_handful_of_rows():
  def split(n):
    y = np.zeros((n, 2), np.int8)
    y[::2, 0] = 1
    y[1::2, 1] = 1
    return data.Split(store=None, pos=np.arange(n), y=y, rows=np.arange(n))
  train, select, how = runner._selection(split(26), None, seed=0)  # 1 %: 3 rows would select
  assert how == "last_epoch" and select is None and len(train) == 26
  train, select, how = runner._selection(split(2589), None, seed=0)
  assert how == "train_holdout" and len(select) == 259 and len(train) == 2330
  assert not set(train.rows) & set(select.rows)
  train, select, how = runner._selection(split(26), split(40), seed=0)
  assert how == "val" and len(select) == 40
