"""The pretrained-encoder API (`cgdmer_jax.load`, raw input, zero-shot, probe features), the
model card of an export and the hub folder, on the shortened quickstart's export (`quick`)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import cgdmer_jax
from cgdmer_jax import export
from cgdmer_jax import inference
from cgdmer_jax import model_card
from cgdmer_jax.data import features
from data_pipelines import signal
from tests import conftest


@pytest.fixture(scope="module")
def enc(quick):
  return cgdmer_jax.load(quick["export"], batch_size=8)


def _readme_example() -> str:
  text = (conftest.REPO / "README.md").read_text()
  section = text.split("## Use a pretrained encoder", 1)[1].split("\n## ", 1)[0]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_on_the_export(quick, capsys):
  code = _readme_example()
  assert 'cgdmer_jax.load("runs/export")' in code
  exec(compile(code.replace("runs/export", str(quick["export"])), "README.md", "exec"), {})
  printed = capsys.readouterr().out
  assert "(4, " in printed and "'AF'" in printed and "'NORM'" in printed


def test_load_is_lazy_and_returns_the_encoder(quick, enc):
  code = ("import sys, cgdmer_jax; assert 'jax' not in sys.modules; "
          "assert 'load' in dir(cgdmer_jax); f = cgdmer_jax.load; assert 'jax' in sys.modules; "
          "print(f.__module__)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=conftest.REPO, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "cgdmer_jax.inference", out.stderr[-2000:]
  assert isinstance(enc, inference.Encoder)
  with pytest.raises(AttributeError):
    _ = cgdmer_jax.no_such_thing


def test_raw_input_is_canonicalised_like_the_converter(enc):
  rng = np.random.default_rng(0)
  fs_in = 2 * enc.fs
  x = rng.normal(0, 0.3, (3, features.NUM_LEADS, int(enc.seconds * fs_in) + 17))
  canon = [signal.canonicalize(r.T, features.LEADS, fs_in, enc.signal_config()) for r in x]
  ecg = np.stack([c.millivolts for c in canon])
  want = enc.embed_ecg(ecg, np.asarray([c.valid_len for c in canon]),
                       np.stack([c.lead_mask for c in canon]))
  # The same recordings with the leads shuffled, in microvolts, through the raw path.
  perm = rng.permutation(features.NUM_LEADS)
  got = enc.embed_ecg(x[:, perm] * 1000, fs=fs_in, leads=[features.LEADS[i] for i in perm],
                      units="uV")
  for k in ("embedding", "shared", "specific", "probe"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
  # One [leads, T] record with three leads named as in files: the rest masked, a short record
  # zero-padded.
  three = enc.embed_ecg(x[0, :3, : int(4 * fs_in)], fs=fs_in, leads=["Lead I", "ii", "DIII"])
  _, valid, mask = enc.canonicalize(x[0, :3, : int(4 * fs_in)], fs=fs_in,
                                    leads=["Lead I", "ii", "DIII"])
  assert three["embedding"].shape == (1, want["embedding"].shape[1])
  assert mask[0].tolist() == [True] * 3 + [False] * 9 and valid[0] == int(4 * enc.fs)
  # The positional canonical call is unchanged.
  again = enc.embed_ecg(ecg)
  assert again["embedding"].shape == want["embedding"].shape


@pytest.mark.parametrize("kwargs, shape, match", [
    ({}, (2, 12, 7), r"must be \[N, 12, "),
    ({"fs": 100, "leads": ["I", "MLII"]}, (2, 2, 1000), r"unknown lead names \['MLII'\]"),
    ({"fs": 100, "leads": ["I", "II"]}, (2, 3, 1000), "2 lead names for 3 channels"),
    ({"fs": 100, "leads": ["I", "lead I"]}, (2, 2, 1000), r"leads given twice: \['I'\]"),
    ({"fs": 100, "units": "mmHg"}, (2, 12, 1000), "unknown units 'mmHg'"),
    ({"fs": 100}, (2, 5, 1000), "5 channels but no lead names"),
    ({"fs": 100}, (2, 2, 12, 1000), r"\[N, leads, T\] or \[leads, T\]"),
    ({"fs": -1}, (1, 12, 1000), "positive sampling rate"),
])
def test_clear_errors(enc, kwargs, shape, match):
  with pytest.raises(ValueError, match=match):
    enc.embed_ecg(np.zeros(shape, np.float32), **kwargs)


def test_an_unusable_record_names_its_index(enc):
  x = np.random.default_rng(1).normal(size=(2, 12, 1000))
  x[1] = np.nan
  with pytest.raises(ValueError, match="record 1: missing leads"):
    enc.embed_ecg(x, fs=100)
  with pytest.raises(ValueError, match="derived from raw input"):
    enc.embed_ecg(x, np.ones(2), fs=100)


def test_zero_shot_and_probe_features(enc):
  x = np.random.default_rng(2).normal(0, 0.3, (5, 12, int(enc.seconds * 250)))
  prompts = {"AF": "atrial fibrillation", "NORM": ["sinus rhythm", "normal ecg"]}
  scores = enc.zero_shot(x, prompts, fs=250)
  assert list(scores) == ["AF", "NORM"]
  assert all(s.shape == (5,) and np.all(np.abs(s) <= 1 + 1e-5) for s in scores.values())
  # By hand: cosine with the (mean of the normalised) prompt embeddings.
  e = enc.embed_ecg(x, fs=250)["embedding"]
  e = e / np.linalg.norm(e, axis=-1, keepdims=True)
  t = enc.embed_text(["atrial fibrillation", "sinus rhythm", "normal ecg"])["embedding"]
  t = t / np.linalg.norm(t, axis=-1, keepdims=True)
  norm = (t[1] + t[2]) / 2
  np.testing.assert_allclose(scores["AF"], e @ t[0], atol=1e-5)
  np.testing.assert_allclose(scores["NORM"], e @ norm / np.linalg.norm(norm), atol=1e-5)
  with pytest.raises(ValueError, match="non-empty strings"):
    enc.zero_shot(x, {"AF": []}, fs=250)
  out = enc.embed_ecg(x, fs=250)
  np.testing.assert_allclose(enc.probe_features(x, fs=250), out["probe"])
  feats = enc.probe_features(x, fs=250, feature="concat")
  assert feats.shape == (5, out["shared"].shape[1] + out["specific"].shape[1])
  np.testing.assert_allclose(enc.probe_features(x, fs=250, feature="shared"), out["shared"])
  with pytest.raises(ValueError, match="unknown feature"):
    enc.probe_features(x, fs=250, feature="nope")


def test_model_card_holds_the_contract_and_the_measured_numbers(quick, tmp_path):
  info = json.loads((quick["export"] / inference.EXPORT_INFO).read_text())
  card = (quick["export"] / inference.MODEL_CARD).read_text()
  contract = info["input"]
  assert (contract["fs"], contract["units"], contract["lead_order"]) == (
      info["fs"], "mV", list(features.LEADS))
  assert contract["num_samples"] == int(round(info["fs"] * info["seconds"]))
  assert info["outputs"]["ecg"]["embedding"] > 0 and info["outputs"]["text"]["embedding"] > 0
  assert info["training"]["size"] == "tiny" and info["training"]["variant"] == "full"
  assert info["license"] == "Apache-2.0" and "arXiv:2602.21154" in info["citation"]
  assert f"{info['fs']} Hz" in card and ", ".join(features.LEADS) in card and "mV" in card
  # The workdir's evaluation (quickstart writes <workdir>/eval/summary.json before exporting).
  summary = json.loads((quick["pretrain"] / "eval" / "summary.json").read_text())
  row = next(r for r in summary if r["model"] == "pretrain")
  zs = row["tasks"]["ptbxl_super"]["zero-shot"]
  ev = info["evaluation"]
  assert ev["found"] and ev["model"] == "pretrain"
  assert ev["models"]["pretrain"]["tasks"]["ptbxl_super"]["zero-shot"]["auc"] == zs["auc"]
  assert ev["models"]["pretrain"]["split"] == row["split"]
  lo, hi = zs["interval"]
  assert f"{100 * zs['auc']:.1f} ({100 * lo:.1f}–{100 * hi:.1f})" in card
  assert "Apache-2.0" in card and "Niu" in card
  # Without an evaluation the card says so.
  none = model_card.evaluation_of(tmp_path)
  assert not none["found"]
  assert "No evaluation found" in model_card.model_card({**info, "evaluation": none})


_SERVE_TF = r"""
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "flax", "cgdmer_jax", "data_pipelines"):
      raise ImportError(f"{name} must not be needed to serve a SavedModel")
sys.meta_path.insert(0, _Block())
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2], allow_pickle=False)
e = model.signatures["ecg"](ecg=x["ecg"], valid_len=x["valid"], lead_mask=x["leads"])
t = model.signatures["text"](ids=x["ids"], len=x["lens"])
np.savez(sys.argv[3], **{f"ecg_{k}": v.numpy() for k, v in e.items()},
         **{f"text_{k}": v.numpy() for k, v in t.items()})
"""


@pytest.mark.slow
def test_export_cli_hub_dir_and_savedmodel(quick, enc, tmp_path):
  out, hub = tmp_path / "export", tmp_path / "hub"
  proc = subprocess.run(
      [sys.executable, "-m", "cgdmer_jax.export", f"--workdir={quick['pretrain']}",
       f"--out={out}", f"--hub_dir={hub}", "--platforms=cpu", "--format=savedmodel"],
      cwd=conftest.REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  readme = (hub / "README.md").read_text()
  assert readme.startswith("---\nlicense: apache-2.0\n")
  assert readme.split("---\n", 2)[2] == (out / inference.MODEL_CARD).read_text()
  for name in (inference.ECG_EXPORT, inference.TEXT_EXPORT, inference.EXPORT_INFO,
               "config.json", "tokenizer.model"):
    assert (hub / name).read_bytes() == (out / name).read_bytes(), name
  from_hub = cgdmer_jax.load(hub, batch_size=8)
  x = np.random.default_rng(3).normal(0, 0.3, (2, 12, int(enc.seconds * enc.fs)))
  np.testing.assert_allclose(from_hub.embed_ecg(x)["embedding"], enc.embed_ecg(x)["embedding"],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(from_hub.embed_text(["sinus rhythm"])["embedding"],
                             enc.embed_text(["sinus rhythm"])["embedding"], rtol=1e-4, atol=1e-5)
  # publish() refuses a non-empty folder unless told to overwrite.
  with pytest.raises(FileExistsError, match="not empty"):
    model_card.publish(out, hub)
  model_card.publish(out, hub, overwrite=True)
  # The SavedModel serves with TensorFlow alone (JAX blocked) and matches the JAX encoders: the
  # same StableHLO runs inside XlaCallModule, so only XLA fusion/order differences remain.
  info = json.loads((out / inference.EXPORT_INFO).read_text())
  assert set(info["formats"]["savedmodel"]["signatures"]) == {"ecg", "text"}
  ecg, valid, leads = enc.canonicalize(np.random.default_rng(4).normal(0, 0.3, (5, 12, 2500)),
                                       fs=250)
  valid[1] = 700
  leads[2, 3] = False
  texts = ["sinus rhythm, normal ecg", "atrial fibrillation", "left axis"]
  ids, lens = enc.tokenize(texts)
  got = _serve_savedmodel(tmp_path, hub / "savedmodel", ecg, valid, leads, ids, lens)
  want_e, want_t = enc.embed_ecg(ecg, valid, leads), enc.embed_text(texts)
  for k in ("embedding", "shared", "specific", "probe"):
    np.testing.assert_allclose(got[f"ecg_{k}"], want_e[k], rtol=1e-4, atol=1e-5)
  for k in ("embedding", "shared", "specific"):
    np.testing.assert_allclose(got[f"text_{k}"], want_t[k], rtol=1e-4, atol=1e-5)


def _serve_savedmodel(tmp_path, savedmodel, ecg, valid, leads, ids, lens):
  """The SavedModel's outputs on these inputs, computed by TensorFlow in a separate process."""
  np.savez(tmp_path / "x.npz", ecg=ecg, valid=valid, leads=leads, ids=ids, lens=lens)
  (tmp_path / "serve.py").write_text(_SERVE_TF)
  proc = subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(savedmodel),
                         str(tmp_path / "x.npz"), str(tmp_path / "tf.npz")], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return np.load(tmp_path / "tf.npz", allow_pickle=False)


@pytest.mark.slow
def test_bfloat16_savedmodel_matches_the_bfloat16_jax_export(quick, tmp_path):
  out = tmp_path / "bf16"
  export.export_model(quick["pretrain"], out, dtype="bfloat16", platforms=("cpu",),
                      formats=("jax", "savedmodel"))
  enc = inference.load(out, batch_size=8)
  ecg, valid, leads = enc.canonicalize(np.random.default_rng(5).normal(0, 0.3, (4, 12, 1000)),
                                       fs=100)
  ids, lens = enc.tokenize(["sinus rhythm", "atrial fibrillation"])
  got = _serve_savedmodel(tmp_path, out / "savedmodel", ecg, valid, leads, ids, lens)
  # bfloat16 matmuls: the stated tolerance is 2e-2 relative, 2e-3 absolute on unit-norm outputs.
  np.testing.assert_allclose(got["ecg_embedding"], enc.embed_ecg(ecg, valid, leads)["embedding"],
                             rtol=2e-2, atol=2e-3)
  np.testing.assert_allclose(got["text_embedding"], enc.embed_ids(ids, lens)["embedding"],
                             rtol=2e-2, atol=2e-3)
