"""The main job end to end (shortened), the export in a fresh process, embed and evaluate CLIs.

The `quick` fixture (conftest.py) is the shortened quickstart run, shared with test_api.py.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cgdmer_jax import inference
from cgdmer_jax import quickstart
from cgdmer_jax.evaluators import linear_probe
from cgdmer_jax.evaluators import logreg_probe
from cgdmer_jax.evaluators import runner
from data_pipelines import locate
from tests import conftest

TASKS = ["ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm", "cpsc2018", "csn"]


def test_quickstart_produces_table_plots_and_export(quick):
  summary = (quick["eval"] / "summary.md").read_text()
  assert "| pretrain | zero-shot |" in summary
  for probe in ("merl", "logreg"):
    for feat in ("shared", "specific", "concat"):
      assert f"| random_init(seed=0) | linear probe 100% {probe} {feat} |" in summary
  # Two training records at 1 %: no number, and the reason, instead of 50.0.
  assert "| pretrain | linear probe 1% merl concat | – |" in summary
  assert "can be trained" in summary
  assert "Paired difference pretrain − random_init(seed=0)" in summary
  # The headline: the three PTB-XL super cells of both models and their paired difference.
  head = quickstart.headline(quick["eval"]).splitlines()
  assert head[0] == "| ptbxl_super | pretrain | random_init(seed=0) | pretrain − random init |"
  assert [h.split(" | ")[0] for h in head[2:]] == [f"| {m}" for m in quickstart.HEADLINE]
  res_cells = json.loads((quick["eval"] / "summary.json").read_text())[0]["tasks"]
  zs_auc = res_cells["ptbxl_super"]["zero-shot"]["auc"]
  assert head[2].split(" | ")[1].startswith(f"{100 * zs_auc:.1f} (")
  assert " to " in head[2].split(" | ")[3]  # a paired interval, not a dash
  names = {os.path.basename(p) for p in quick["plots"]}
  for task in TASKS[:4]:
    assert f"{task}_per_class_auc.png" in names, names
    assert f"{task}_macro_auc.png" in names, names
  assert "ptbxl_super_test_tsne.png" in names
  for p in quick["plots"]:
    assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  res = json.loads((quick["eval"] / "pretrain" / "results.json").read_text())
  zs = res["tasks"]["ptbxl_super"]["zero_shot"]
  assert zs["interval"][0] <= zs["auc"] <= zs["interval"][1]
  assert set(res["tasks"]["ptbxl_super"]["linear_probe"]["logreg"]["concat"]) == {
      "1", "10", "100"}
  for f in ("ecg_encoder.jax_exported", "text_encoder.jax_exported", "export_info.json",
            "tokenizer.model", "config.json"):
    assert (quick["export"] / f).is_file(), f
  assert (quick["export"] / "params").is_dir()


_FRESH = r"""
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("cgdmer_jax", "data_pipelines", "configs", "flax"):
      raise ImportError(f"{name} must not be needed to run an export")
sys.meta_path.insert(0, _Block())
import json, pathlib, numpy as np, jax
export, inputs, out = map(pathlib.Path, sys.argv[1:4])
ecg = jax.export.deserialize((export / "ecg_encoder.jax_exported").read_bytes())
text = jax.export.deserialize((export / "text_encoder.jax_exported").read_bytes())
x = np.load(inputs / "x.npz", allow_pickle=False)
e = ecg.call(x["ecg"], x["valid"], x["leads"])
t = text.call(x["ids"], x["lens"])
np.savez(out, **{f"ecg_{k}": np.asarray(v) for k, v in e.items()},
         **{f"text_{k}": np.asarray(v) for k, v in t.items()})
"""


def test_export_matches_live_model_in_fresh_process(quick, tmp_path):
  live = inference.from_workdir(quick["pretrain"], batch_size=8)
  locs = locate.records_in_folder(conftest.EMBEDDED / "ptbxl" / "records100")[:5]
  reader = locate.CanonicalReader(live.signal_config())
  canon = [reader.read(loc) for loc in locs]
  ecg = np.stack([c.millivolts for c in canon])
  valid = np.asarray([c.valid_len for c in canon], np.int32)
  leads = np.stack([c.lead_mask for c in canon])
  valid[1] = 700  # a padded record too
  leads[2, 3] = False  # and a missing lead
  ids, lens = live.tokenize(["sinus rhythm, normal ecg", "vorhofflimmern", "left axis"])
  np.savez(tmp_path / "x.npz", ecg=ecg, valid=valid, leads=leads, ids=ids, lens=lens)
  # The export is moved away from the workdir it came from.
  moved = tmp_path / "moved_export"
  shutil.copytree(quick["export"], moved)
  script = tmp_path / "fresh.py"
  script.write_text(_FRESH)
  env = dict(os.environ, PYTHONPATH="")
  proc = subprocess.run([sys.executable, str(script), str(moved), str(tmp_path),
                         str(tmp_path / "out.npz")], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.load(tmp_path / "out.npz", allow_pickle=False)
  want_e = live.embed_ecg(ecg, valid, leads)
  want_t = live.embed_text(["sinus rhythm, normal ecg", "vorhofflimmern", "left axis"])
  # float32 export of the same weights: only XLA fusion/order differences remain.
  for k in ("embedding", "shared", "specific", "probe"):
    np.testing.assert_allclose(got[f"ecg_{k}"], want_e[k], rtol=1e-4, atol=1e-5)
  for k in ("embedding", "shared", "specific"):
    np.testing.assert_allclose(got[f"text_{k}"], want_t[k], rtol=1e-4, atol=1e-5)
  # Through the library loader as well.
  exp = inference.from_export(moved, batch_size=8)
  np.testing.assert_allclose(exp.embed_ecg(ecg, valid, leads)["embedding"],
                             want_e["embedding"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_embed_cli_good_records_and_a_broken_header(quick, tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  for name in ("JS03291", "JS06908", "JS07875"):
    for ext in (".hea", ".mat"):
      shutil.copy(conftest.EMBEDDED / "csn" / "cinc2021" / f"{name}{ext}", folder)
  shutil.copy(conftest.EMBEDDED / "wfdb_samples" / "edge_cases" / "georgia_malformed_header"
              / "E00271.hea", folder)
  out = tmp_path / "emb" / "e.npy"
  proc = subprocess.run([sys.executable, "-m", "cgdmer_jax.embed", f"--model={quick['export']}",
                         f"--input={folder}", f"--out={out}", "--features=probe"],
                        cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 3, proc.stderr[-3000:]  # documented: some records failed
  assert "failed:" in proc.stderr and "E00271" in proc.stderr
  emb = np.load(out, allow_pickle=False)
  info = json.loads((quick["export"] / "export_info.json").read_text())
  assert emb.shape == (3, int(info["ecg_outputs"]["probe"].split(",")[-1].strip(" ']")))
  assert np.all(np.isfinite(emb))
  with open(out.with_name("e.index.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["status"] for r in rows] == ["failed", "ok", "ok", "ok"]
  assert "HeaderSyntaxError" in rows[0]["reason"] and rows[0]["row"] == "-1"
  assert [r["row"] for r in rows[1:]] == ["0", "1", "2"]
  # Nothing to embed is a usage error.
  empty = tmp_path / "empty"
  empty.mkdir()
  proc = subprocess.run([sys.executable, "-m", "cgdmer_jax.embed", f"--model={quick['export']}",
                         f"--input={empty}", f"--out={tmp_path / 'x.npy'}"],
                        cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "no ECG record" in proc.stderr


@pytest.mark.slow
def test_evaluate_all_six_shared_tasks(quick, shared_data, tmp_path):
  task_names = runner.expand_csn(TASKS, ["merl", "exact"])
  results = runner.evaluate_models(
      [str(quick["export"])], task_names=task_names, fractions=[0.01, 1.0],
      data_root=shared_data, out=tmp_path / "eval",
      # Small settings: this test is about every task and record being scored, not the probes.
      protocol=runner.Protocol(features=("concat",), resamples=200,
                               merl=linear_probe.ProbeConfig(epochs=3),
                               logreg=logreg_probe.LogRegConfig(c_grid=(0.1, 1.0))),
      batch_size=128, progress=False)
  assert [r["model"] for r in results] == ["export"]
  r = results[0]
  for task in task_names:
    e = r["tasks"][task]
    assert e["counts"]["test"] > 0, (task, e["counts"])
    assert not e["left_out"], (task, e["left_out"])
    for probe in ("merl", "logreg"):
      cell = e["linear_probe"][probe]["concat"]["100"]
      assert cell["subset"]["unreadable_dropped"] == 0
      if task.startswith("ptbxl"):
        assert cell["auc"] is not None, (task, probe)
        assert cell["interval"][0] <= cell["auc"] <= cell["interval"][1]
  for task in TASKS[:4]:
    assert r["tasks"][task]["zero_shot"]["auc"] is not None, task
  print(r["model"], "ptbxl_super test: zero-shot", r["tasks"]["ptbxl_super"]["zero_shot"]["auc"],
        "logreg 100%", r["tasks"]["ptbxl_super"]["linear_probe"]["logreg"]["concat"]["100"]["auc"])
  # Both CSN label readings in one run: zero-shot and probe rows, positives under each.
  summary = (tmp_path / "eval" / "summary.md").read_text()
  header = summary.splitlines()[0]
  assert "| csn | csn_exact |" in header
  by_reading = r["tasks"]["csn"]["positives_by_reading"]
  assert (by_reading["merl"]["AF"], by_reading["exact"]["AF"]) == (4, 3)
  assert r["tasks"]["csn"]["positives"]["train"]["ST"] > (
      r["tasks"]["csn_exact"]["positives"]["train"]["ST"])
  for metric in ("zero-shot", "linear probe 100% merl concat", "linear probe 100% logreg concat"):
    row = next(line for line in summary.splitlines() if f"| export | {metric} |" in line)
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert len(cols) == 2 + len(task_names), row


@pytest.mark.slow
def test_evaluate_cli_seed_group_and_its_comparison(quick, tmp_path):
  # The same export twice is a group of two identical seeds: the group's row equals the
  # model's, and the paired difference of the group and the model is exactly 0.
  export = str(quick["export"])
  out = tmp_path / "eval"
  proc = subprocess.run(
      [sys.executable, "-m", "cgdmer_jax.evaluate", f"--workdir={export},{export}",
       "--tasks=ptbxl_super", "--fractions=100", "--split=val", "--probe=logreg",
       "--features=shared", "--logreg_c=1", "--bootstrap=100", f"--data_root={conftest.EMBEDDED}",
       "--group=recipe=export+export_", "--compare=recipe,export", f"--out={out}"],
      cwd=conftest.REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert [m["model"] for m in summary] == ["export", "export_", "recipe"]
  model, group = summary[0]["tasks"]["ptbxl_super"], summary[2]["tasks"]["ptbxl_super"]
  for metric in ("zero-shot", "linear probe 100% logreg shared"):
    assert group[metric]["auc"] == pytest.approx(model[metric]["auc"])
    assert group[metric]["seed_aucs"] == pytest.approx([model[metric]["auc"]] * 2)
  diff = json.loads((out / "comparisons.json").read_text())[0]["tasks"]["ptbxl_super"]
  assert diff["zero-shot"]["interval"] == [0.0, 0.0]
  assert (out / "recipe" / "results.json").exists()
  assert "| recipe | zero-shot |" in proc.stdout
  # The two stored model folders, without the checkpoint: the same group and comparison.
  again = tmp_path / "again"
  proc = subprocess.run(
      [sys.executable, "-m", "cgdmer_jax.evaluate", f"--scored={out / 'export'},{out / 'export_'}",
       "--tasks=ptbxl_super", "--split=val", "--bootstrap=100", "--group=recipe=export+export_",
       "--compare=recipe,export", f"--out={again}"],
      cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((again / "summary.json").read_text())[2]["tasks"] == summary[2]["tasks"]
  assert json.loads((again / "comparisons.json").read_text()) == json.loads(
      (out / "comparisons.json").read_text())
  # Stored on val with 100 resamples: another split or bootstrap is a usage error.
  bad = subprocess.run(
      [sys.executable, "-m", "cgdmer_jax.evaluate", f"--scored={out / 'export'}",
       "--tasks=ptbxl_super", "--split=val", f"--out={again}2"],
      cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "bootstrap resamples 100" in bad.stderr
  # A group naming a model that was not evaluated is a usage error.
  bad = subprocess.run(
      [sys.executable, "-m", "cgdmer_jax.evaluate", f"--workdir={export}", "--tasks=ptbxl_super",
       f"--data_root={conftest.EMBEDDED}", "--group=recipe=export+other", f"--out={out}2"],
      cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "not among the evaluated models" in bad.stderr


def test_default_comparison_is_against_random_init_with_baselines_beside(quick, tmp_path):
  # The baselines come after the random-init encoder: the default pair must not pick them.
  runner.evaluate_models(
      [str(quick["export"])], random_init=True, baselines=("band_power",),
      task_names=["ptbxl_super"], fractions=[1.0], data_root=conftest.EMBEDDED,
      out=tmp_path / "eval", progress=False,
      protocol=runner.Protocol(split="val", probes=("logreg",), features=("shared",),
                               resamples=100, logreg=logreg_probe.LogRegConfig(c_grid=(1.0,))))
  comparisons = json.loads((tmp_path / "eval" / "comparisons.json").read_text())
  assert [(c["a"], c["b"]) for c in comparisons] == [("export", "random_init(seed=0)")]
