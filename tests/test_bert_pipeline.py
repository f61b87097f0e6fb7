"""A pretrained BERT report tower end to end, on the embedded PTB-XL subset.

Build with the checkpoint's WordPiece tokenizer -> pretrain a few steps with the tower loaded
from the folder and its first block frozen -> the frozen parameters are bit-identical to the
checkpoint's, the others moved -> export -> `embed --texts` in a fresh process gives the live
model's text embeddings. A dataset of another tokenizer is refused before compiling.
"""

import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("transformers")

from cgdmer_jax import export as export_lib  # noqa: E402
from cgdmer_jax import inference  # noqa: E402
from cgdmer_jax.data import reader  # noqa: E402
from cgdmer_jax.models import bert_tower  # noqa: E402
from cgdmer_jax.train import checks  # noqa: E402
from cgdmer_jax.train import loop  # noqa: E402
from cgdmer_jax.train import pretrained_text  # noqa: E402
from cgdmer_jax.train import sharding  # noqa: E402
from data_pipelines import signal  # noqa: E402
from data_pipelines import write  # noqa: E402
from tests import bert_fixture  # noqa: E402
from tests import conftest  # noqa: E402
from tests.test_train import params_of  # noqa: E402
from tests.test_train import tiny_config  # noqa: E402

MAX_LEN = 64
STEPS = 3
TEXTS = ["sinusrhythmus normales ekg", "vorhofflimmern", "linkstyp, periphere niedervoltage"]


@pytest.fixture(scope="module")
def run(embedded_data, tmp_path_factory):
  root = tmp_path_factory.mktemp("bert_pipeline")
  hf = bert_fixture.make_checkpoint(root / "hf", embedded_data / "ptbxl")
  data = root / "data"
  write.build(write.BuildConfig(
      source="ptbxl", input=str(embedded_data / "ptbxl"), output=str(data),
      signal=signal.Config(fs=100, seconds=10.0), shards=2, tokenizer=f"hf:{hf}",
      max_report_len=MAX_LEN, workers=1, progress=False))
  config = tiny_config(data, **{"model.text.init_from": str(hf), "model.text.freeze_layers": 1,
                                "total_steps": STEPS, "checkpoint.every_steps": STEPS,
                                "log_every_steps": 1})
  workdir = root / "work"
  loop.train_and_evaluate(config, str(workdir))
  return dict(hf=hf, data=data, workdir=workdir, config=config, root=root)


def test_frozen_layers_bit_identical_others_trained(run):
  config = tiny_config(run["data"], **{"model.text.init_from": str(run["hf"]),
                                       "model.text.freeze_layers": 1})
  params, meta = params_of(run["workdir"], config)
  assert meta["step"] == STEPS
  assert config.model.text.kind == "bert" and config.model.text.mlm_head
  assert dict(config.model.special_ids) == bert_fixture.SPECIAL_IDS
  loaded = pretrained_text.pretrained_params(config)
  flat = {bert_tower.names_of(path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  frozen = [n for n in loaded if bert_tower.is_frozen(n, config.model)]
  trained = [n for n in loaded if not bert_tower.is_frozen(n, config.model)]
  assert any(n[2] == "embeddings" for n in frozen) and any(n[2:4] == ("layers", "0")
                                                          for n in frozen)
  assert any(n[2:4] == ("layers", "1") for n in trained)
  assert any(n[0] == "text_head" for n in trained)  # the checkpoint's MLM head
  for n in frozen:
    np.testing.assert_array_equal(flat[n], loaded[n], err_msg="/".join(n))
  moved = [n for n in trained if not np.array_equal(flat[n], loaded[n])]
  # Every trained tensor that gets a gradient moves (AdamW); all of layer 1's do.
  assert {n for n in trained if n[2:4] == ("layers", "1")} <= set(moved)
  assert len(moved) >= len(trained) - 2, sorted(set(trained) - set(moved))


def test_no_optimizer_state_for_frozen_parameters(run):
  config = tiny_config(run["data"], **{"model.text.init_from": str(run["hf"]),
                                       "model.text.freeze_layers": 1})
  loop.apply_dataset_info(config, reader.load_info(config.data.dir))
  s = loop.setup(config, sharding.make_mesh(config))
  size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
  n_params = size(s.abstract_state["params"])
  n_frozen = sum(int(np.prod(a.shape)) for n, a in pretrained_text.pretrained_params(config).items()
                 if bert_tower.is_frozen(n, config.model))
  # Adam keeps two moments per trained parameter, none for frozen ones (+ step counters).
  assert abs(size(s.abstract_state["opt_state"]) - 2 * (n_params - n_frozen)) < 16


def test_export_and_embed_texts_in_a_fresh_process(run, tmp_path):
  export = tmp_path / "export"
  export_lib.export_model(run["workdir"], export, platforms=("cpu",))
  assert (export / "wordpiece.json").is_file()
  texts = tmp_path / "texts.txt"
  texts.write_text("\n".join(TEXTS) + "\n")
  records = tmp_path / "records"
  records.mkdir()
  for ext in (".hea", ".mat"):
    (records / f"JS03291{ext}").write_bytes(
        (conftest.EMBEDDED / "csn" / "cinc2021" / f"JS03291{ext}").read_bytes())
  out = tmp_path / "emb.npy"
  proc = subprocess.run([sys.executable, "-m", "cgdmer_jax.embed", f"--model={export}",
                         f"--input={records}", f"--out={out}", f"--texts={texts}"],
                        cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.load(tmp_path / "emb.texts.npy", allow_pickle=False)
  live = inference.from_workdir(run["workdir"]).embed_text(TEXTS)["embedding"]
  assert got.shape == (len(TEXTS), run["config"].model.embed_dim)
  np.testing.assert_allclose(got, live, rtol=1e-4, atol=1e-5)
  assert not np.allclose(got[0], got[1], atol=1e-3)


def test_dataset_of_another_tokenizer_fails_before_compiling(run, embedded_data, tmp_path):
  other = bert_fixture.make_checkpoint(tmp_path / "other_bert", embedded_data / "ptbxl",
                                       vocab_size=350)
  config = tiny_config(run["data"], **{"model.text.init_from": str(other)})
  with pytest.raises(checks.ConfigError,
                     match=r"(?s)built with tokenizer WordPiece hf:hf .*other_bert"):
    loop.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_resume_restores_the_masked_optimizer_state(run, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(run["workdir"], workdir)
  overrides = {"model.text.init_from": str(run["hf"]), "model.text.freeze_layers": 1,
               "total_steps": STEPS + 1, "checkpoint.every_steps": STEPS + 1}
  before, _ = params_of(workdir, tiny_config(run["data"], **overrides))
  loop.train_and_evaluate(tiny_config(run["data"], **overrides), str(workdir))
  after, meta = params_of(workdir, tiny_config(run["data"], **overrides))
  assert meta["step"] == STEPS + 1
  emb = ("text", "bert", "embeddings", "word", "embedding")
  top = ("text", "bert", "layers", "1", "fc1", "kernel")
  flat = lambda p: {bert_tower.names_of(k): np.asarray(v)  # noqa: E731
                    for k, v in jax.tree_util.tree_flatten_with_path(p)[0]}
  b, a = flat(before), flat(after)
  np.testing.assert_array_equal(a[emb], b[emb])
  assert not np.array_equal(a[top], b[top])
