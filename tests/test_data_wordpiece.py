"""`data_pipelines.build --tokenizer=hf:DIR`: WordPiece ids of the checkpoint's own tokenizer.

The stored ids are compared with what the `tokenizers` library gives for the stored
(cleaned) report, with the checkpoint's `tokenizer.json` and its post-processor adding
[CLS] / [SEP]: the converter's encoding is not re-derived from its own code.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

import tokenizers  # noqa: E402

from data_pipelines import signal  # noqa: E402
from data_pipelines import tokenizer  # noqa: E402
from data_pipelines import wordpiece  # noqa: E402
from data_pipelines import write  # noqa: E402
from tests import bert_fixture  # noqa: E402
from tests import conftest  # noqa: E402
from tests.test_data_roundtrip import _stored  # noqa: E402

MAX_LEN = 48  # short enough that some embedded reports are truncated


@pytest.fixture(scope="module")
def hf_dir(embedded_data, tmp_path_factory):
  return bert_fixture.make_checkpoint(tmp_path_factory.mktemp("hf_ckpt"),
                                      embedded_data / "ptbxl")


@pytest.fixture(scope="module")
def wp_out(embedded_data, hf_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("ptbxl_wordpiece")
  write.build(write.BuildConfig(
      source="ptbxl", input=str(embedded_data / "ptbxl"), output=str(out),
      signal=signal.Config(fs=100, seconds=10.0), shards=2, tokenizer=f"hf:{hf_dir}",
      max_report_len=MAX_LEN, workers=1, progress=False))
  return out


def test_stored_ids_are_the_tokenizers_library_output(wp_out, hf_dir):
  ref = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
  ids = bert_fixture.SPECIAL_IDS
  stored = _stored(wp_out)
  n_reports = n_truncated = 0
  for ex in stored.values():
    report = ex["report"].decode()
    n = int(ex["report_len"])
    got = ex["report_ids"]
    if not report:
      assert n == 0 and (got == ids["pad"]).all()
      continue
    want = ref.encode(report).ids  # [CLS] ... [SEP] from tokenizer.json's post-processor
    assert want[0] == ids["bos"] and want[-1] == ids["eos"]
    if len(want) > MAX_LEN:
      want = want[:MAX_LEN - 1] + [ids["eos"]]
      n_truncated += 1
    assert n == len(want)
    np.testing.assert_array_equal(got[:n], want)
    assert (got[n:] == ids["pad"]).all()
    n_reports += 1
  assert n_reports > 100 and n_truncated > 0


def test_build_info_names_the_checkpoint_tokenizer(wp_out, hf_dir):
  info = json.loads((wp_out / "build_info.json").read_text())
  assert info["tokenizer"] == wordpiece.FILE and info["tokenizer_kind"] == "wordpiece"
  assert info["special_ids"] == bert_fixture.SPECIAL_IDS
  ref = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
  assert info["vocab_size"] == ref.get_vocab_size()
  assert info["vocab_sha256"] == wordpiece.vocab_sha256(ref)
  assert not (wp_out / "tokenizer.model").exists()
  tok = tokenizer.load(wp_out / wordpiece.FILE)
  assert tok.special_ids == bert_fixture.SPECIAL_IDS


def test_vocab_txt_alone_encodes_like_tokenizer_json(hf_dir, embedded_data, tmp_path):
  for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
  from_vocab = wordpiece.from_folder(tmp_path)
  from_json = wordpiece.from_folder(hf_dir)
  assert from_vocab.special_ids == from_json.special_ids == bert_fixture.SPECIAL_IDS
  for text in bert_fixture.embedded_reports(embedded_data / "ptbxl")[:50]:
    a, na = from_vocab.encode(text, MAX_LEN)
    b, nb = from_json.encode(text, MAX_LEN)
    assert na == nb and (a == b).all()


def test_folder_without_tokenizer_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
    wordpiece.from_folder(tmp_path)


def test_cli_refuses_a_folder_without_tokenizer(embedded_data, tmp_path):
  (tmp_path / "ckpt").mkdir()
  proc = subprocess.run(
      [sys.executable, "-m", "data_pipelines.build", "--source=ptbxl",
       f"--input={embedded_data / 'ptbxl'}", f"--output={tmp_path / 'out'}",
       f"--tokenizer=hf:{tmp_path / 'ckpt'}"],
      cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "neither tokenizer.json nor vocab.txt" in proc.stderr
  assert not (tmp_path / "out").exists()
