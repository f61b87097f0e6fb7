"""The main job end to end (shortened), the export in a fresh process, embed and evaluate CLIs."""

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
from cgdmer_jax.evaluators import runner
from configs import pretrain
from data_pipelines import locate
from tests import conftest

TASKS = ["ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm", "cpsc2018", "csn"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  return quickstart.run(tmp_path_factory.mktemp("quickstart"), conftest.EMBEDDED,
                        pretrain.get_config("size=tiny"), steps=10, probe_epochs=3)


def test_quickstart_produces_table_plots_and_export(quick):
  summary = (quick["eval"] / "summary.md").read_text()
  assert "| pretrain | zero-shot |" in summary
  assert "| random_init(seed=0) | linear probe 100% |" in summary
  names = {os.path.basename(p) for p in quick["plots"]}
  for task in TASKS[:4] + ["cpsc2018"]:
    assert f"{task}_per_class_auc.png" in names, names
  assert "ptbxl_super_test_tsne.png" in names
  for p in quick["plots"]:
    assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  res = json.loads((quick["eval"] / "pretrain" / "results.json").read_text())
  assert 0.0 <= res["tasks"]["ptbxl_super"]["zero_shot"]["macro_auc"] <= 1.0
  assert set(res["tasks"]["ptbxl_super"]["linear_probe"]) == {"1", "10", "100"}
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


def test_evaluate_all_six_shared_tasks(quick, shared_data, tmp_path):
  results = runner.evaluate_models(
      [str(quick["export"])], task_names=TASKS, fractions=[0.01, 0.1, 1.0],
      data_root=shared_data, out=tmp_path / "eval",
      probe_config=linear_probe.ProbeConfig(epochs=3), batch_size=128, progress=False)
  assert [r["model"] for r in results] == ["export"]
  for r in results:
    for task in TASKS:
      e = r["tasks"][task]
      assert e["counts"]["test"] > 0, (task, e["counts"])
      assert not e["left_out"], (task, e["left_out"])
      assert e["zero_shot"]["macro_auc"] is not None, task
      for frac in ("1", "10", "100"):
        assert e["linear_probe"][frac]["test_auc"] is not None, (task, frac)
    print(r["model"], "ptbxl_super test: zero-shot",
          r["tasks"]["ptbxl_super"]["zero_shot"]["macro_auc"], "probe 100%",
          r["tasks"]["ptbxl_super"]["linear_probe"]["100"]["test_auc"])
  assert (tmp_path / "eval" / "summary.md").is_file()
