"""The converter writing to, and verify reading from, object storage (`pytest -k remote`).

The store is `tests/fake_remote.py`: `file://` URLs that epath and TensorFlow serve through
their remote code path, their bytes in a test folder. Its patches are in this process only, so
the converter runs in-process (`workers=1`). Every test also checks that nothing was written
locally under a mangled name (`file:/...`, what a `pathlib.Path` makes of a URL).
"""

import json
import os
import shutil

import numpy as np
import pytest
from etils import epath

from cgdmer_jax.data import features
from cgdmer_jax.data import reader
from data_pipelines import shard_worker
from data_pipelines import signal
from data_pipelines import tokenizer
from data_pipelines import verify
from data_pipelines import write
from tests import conftest
from tests import fake_remote

DAMAGED = "cgdmer_ecg-train.tfrecord-00002-of-00004"


def _config(output, **kw) -> write.BuildConfig:
  """The build of `conftest.ptbxl_tfrecords` (in-process: `workers=1`), into `output`."""
  return write.BuildConfig(
      source="ptbxl", input=str(conftest.EMBEDDED / "ptbxl"), output=str(output),
      signal=signal.Config(fs=100, seconds=10.0), shards=4, vocab_size=400, workers=1,
      progress=False, **kw)


def _files(root) -> dict[str, bytes]:
  """The dataset's shards and side files (not the `_build` state), read through epath."""
  return {p.name: p.read_bytes() for p in epath.Path(root).iterdir() if p.is_file()}


def _first_batch(data_dir) -> dict[str, np.ndarray]:
  return next(reader.train_batches(data_dir, global_batch_size=8, seed=0, process_index=0,
                                   process_count=1, with_record_id=True))


def test_remote_build_equals_local_and_resumes(store, ptbxl_tfrecords, monkeypatch):
  url = f"{store}/data/ptbxl100"
  summary = write.build(_config(url))
  assert summary.output == url and summary.shards_skipped == 0
  # The same bytes as the local build of the same command, every shard and side file.
  remote, local = _files(url), _files(ptbxl_tfrecords)
  assert sorted(remote) == sorted(local) and len(remote) == 12 + 5
  assert remote == local
  assert not [n for p, _, names in epath.Path(store).walk() for n in names if ".tmp-" in n]
  # Read back as the trainer reads it.
  info, local_info = reader.load_info(url), reader.load_info(ptbxl_tfrecords)
  assert info.data_dir == url and info.shard_files["train"][0].startswith(url)
  assert info.split_sizes == local_info.split_sizes == {"train": 192, "val": 24, "test": 24}
  assert info.shard_lengths == local_info.shard_lengths
  assert info.build_info == local_info.build_info
  assert tokenizer.load(info.tokenizer_path).vocab_size == info.vocab_size
  batch, local_batch = _first_batch(url), _first_batch(ptbxl_tfrecords)
  assert list(batch["record_id"]) == list(local_batch["record_id"])
  np.testing.assert_array_equal(batch["ecg"], local_batch["ecg"])
  # The side files through epath.
  manifest = (epath.Path(url) / features.MANIFEST_FILE).read_text().splitlines()
  assert manifest[0].startswith("record,status") and len(manifest) == 241
  build_info = json.loads((epath.Path(url) / features.BUILD_INFO_FILE).read_text())
  assert build_info["counts"]["written"] == 240
  # A rerun skips every done shard and rewrites identical metadata.
  again = write.build(_config(url))
  assert again.shards_skipped == 12 and again.converted_now == 0
  assert _files(url) == local
  # Without a shard's manifest part (a run cut off after the shard) that shard is redone;
  # the tokenizer can come from a URL too (the same model: the same plan).
  (epath.Path(url) / shard_worker.BUILD_DIR / shard_worker.PARTS_DIR
   / "train-00001-of-00004.csv").unlink()
  monkeypatch.setattr(tokenizer, "train", lambda *a, **k: pytest.fail("trained a tokenizer"))
  third = write.build(_config(url, tokenizer=f"{url}/{features.TOKENIZER_FILE}"))
  assert third.shards_skipped == 11 and third.converted_now == 48
  assert {k: v for k, v in _files(url).items() if k != features.BUILD_INFO_FILE} == {
      k: v for k, v in local.items() if k != features.BUILD_INFO_FILE}


def _flip(path, at):
  with open(path, "r+b") as f:
    f.seek(at)
    byte = f.read(1)
    f.seek(at)
    f.write(bytes([byte[0] ^ 0x01]))


def test_remote_verify(store, ptbxl_tfrecords):
  url = f"{store}/data/copy"
  local_copy = url.removeprefix(fake_remote._ROOT)  # the bucket's bytes, as a test sees them
  shutil.copytree(ptbxl_tfrecords, local_copy)
  clean = verify.verify(url)
  assert clean.ok and clean.records == 240 and clean.shards == 12, clean.format()
  # A flipped byte: named with its offset; on object storage the shard's scan stops there.
  _flip(os.path.join(local_copy, DAMAGED), 500_000)
  report = verify.verify(url)
  assert not report.ok and len(report.problems) == 2, report.format()
  damage, count = report.problems
  assert damage.startswith(f"damaged record: {url}/{DAMAGED} at byte "), damage
  assert "copy the shard to a local disk to scan past it" in damage
  assert count.startswith(f"{url}/{DAMAGED}: ") and "the TFDS metadata says 48" in count
