"""The reader on damaged shards: file and offset named, or damaged records skipped and counted."""

import csv
import itertools
import shutil

import numpy as np
import pytest

from cgdmer_jax.data import features
from cgdmer_jax.data import reader
from cgdmer_jax.data import shard_scan

SHARD = "cgdmer_ecg-train.tfrecord-00001-of-00004"


def damage(path, record_index, nbytes=64):
  """Overwrites `nbytes` inside the payload of the record at `record_index` (file order);
  returns the record's header offset."""
  start = sorted(shard_scan.record_starts(path, path.stat().st_size))[record_index]
  with open(path, "r+b") as f:
    f.seek(start + 12 + 5000)
    f.write(b"\xa5" * nbytes)
  return start


def shard_order(data, split, shard):
  with open(data / features.MANIFEST_FILE, newline="", encoding="utf-8") as f:
    return [r["record"] for r in csv.DictReader(f)
            if r["status"] == "written" and r["split"] == split and r["shard"] == str(shard)]


def eval_ids(data, **kw):
  ids = []
  for batch in reader.eval_batches(data, split="train", global_batch_size=16, process_index=0,
                                   process_count=1, **kw):
    ids += list(batch["record_id"][batch["mask"]])
  return ids


def train_ids(data, steps, **kw):
  return [b["record_id"] for b in itertools.islice(reader.train_batches(
      data, global_batch_size=16, seed=0, shuffle_buffer=64, process_index=0, process_count=1,
      with_record_id=True, **kw), steps)]


@pytest.fixture()
def damaged(ptbxl_tfrecords, tmp_path):
  data = tmp_path / "damaged"
  shutil.copytree(ptbxl_tfrecords, data)
  offset = damage(data / SHARD, 10)
  return data, offset


def test_damaged_record_names_shard_and_offset(damaged):
  data, offset = damaged
  for stream in (lambda: train_ids(data, 12), lambda: eval_ids(data)):
    with pytest.raises(shard_scan.DamagedShardError) as e:
      stream()
    message = str(e.value)
    assert f"damaged TFRecord shard {data / SHARD}: the record at byte {offset} fails" in message
    assert f"python -m data_pipelines.verify --data_dir={data}" in message
    assert "rerunning the same `python -m data_pipelines.build` command" in message
    assert e.value.damage.offset == offset


def test_skip_loses_only_the_damaged_records_and_counts_them(ptbxl_tfrecords, damaged):
  data, _ = damaged
  # A second damaged record, in another shard, whose header is hit: the scan resyncs.
  other = data / "cgdmer_ecg-train.tfrecord-00003-of-00004"
  start = sorted(shard_scan.record_starts(other, other.stat().st_size))[30]
  with open(other, "r+b") as f:
    f.seek(start)
    f.write(b"\x00" * 64)
  log = shard_scan.DamageLog()
  ids = eval_ids(data, on_corrupt="skip", damage_log=log)
  lost = set(eval_ids(ptbxl_tfrecords)) - set(ids)
  assert lost == {shard_order(data, "train", 1)[10], shard_order(data, "train", 3)[30]}
  assert len(ids) == 190 and log.count == 2
  # Training streams count each damaged record once, over every epoch that meets it.
  log = shard_scan.DamageLog()
  batches = train_ids(data, 30, on_corrupt="skip", damage_log=log)
  assert log.count == 2
  assert not lost & set(np.concatenate(batches))


def test_skip_mode_reads_the_same_stream_on_clean_data(ptbxl_tfrecords):
  log = shard_scan.DamageLog()
  plain = train_ids(ptbxl_tfrecords, 15)
  skipping = train_ids(ptbxl_tfrecords, 15, on_corrupt="skip", damage_log=log)
  for a, b in zip(plain, skipping, strict=True):
    np.testing.assert_array_equal(a, b)
  assert log.count == 0
  with pytest.raises(ValueError, match="on_corrupt must be one of"):
    train_ids(ptbxl_tfrecords, 1, on_corrupt="ignore")
