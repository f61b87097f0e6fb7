"""The reader: static shapes, per-process file sharding, exact resumption, exactly-once eval."""

import csv
import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cgdmer_jax.data import features
from cgdmer_jax.data import reader
from cgdmer_jax.data import stream
from data_pipelines import signal
from data_pipelines import write

SHARDS = 4


@pytest.fixture(scope="module")
def data(embedded_data, tmp_path_factory):
  out = tmp_path_factory.mktemp("reader") / "ptbxl100"
  write.build(write.BuildConfig(source="ptbxl", input=str(embedded_data / "ptbxl"),
                                output=str(out), signal=signal.Config(fs=100), shards=SHARDS,
                                vocab_size=300, max_report_len=64, workers=1,
                                progress=False))
  return out


@pytest.fixture(scope="module")
def shard_records(data):
  """{split: [set of record ids of shard 0, shard 1, ...]} from the manifest."""
  out = {}
  with open(data / features.MANIFEST_FILE, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      if row["status"] == "written":
        out.setdefault(row["split"], [set() for _ in range(SHARDS)])[int(row["shard"])].add(
            row["record"])
  return out


def _take(it, n):
  return list(itertools.islice(it, n))


def test_load_info(data, tmp_path):
  info = reader.load_info(data)
  assert (info.fs, info.num_samples, info.max_report_len) == (100, 1000, 64)
  assert info.split_sizes == {"train": 192, "val": 24, "test": 24}
  assert all(len(v) == SHARDS for v in info.shard_files.values())
  assert 100 < info.vocab_size <= 300 and info.tokenizer_path.endswith("tokenizer.model")
  with pytest.raises(FileNotFoundError, match="not a converted dataset"):
    reader.load_info(tmp_path)


def test_train_batch_shapes_dtypes_and_values(data):
  batch = next(reader.train_batches(data, global_batch_size=8, seed=0, process_index=0,
                                    process_count=1, with_record_id=True))
  expect = {"ecg": ((8, 12, 1000), np.float32), "lead_mask": ((8, 12), np.bool_),
            "valid_len": ((8,), np.int32), "report_ids": ((8, 64), np.int32),
            "report_len": ((8,), np.int32), "has_report": ((8,), np.bool_)}
  for key, (shape, dtype) in expect.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  # Values equal what TFDS itself decodes for the same records (int16 uV / 1000).
  ds = tfds.builder_from_directory(str(data)).as_dataset(split="train")
  stored = {ex["record_id"].decode(): ex for ex in tfds.as_numpy(ds)}
  for i, rid in enumerate(batch["record_id"]):
    ex = stored[rid]
    np.testing.assert_array_equal(batch["ecg"][i], ex["ecg"].astype(np.float32) / 1000)
    np.testing.assert_array_equal(batch["report_ids"][i], ex["report_ids"])
    assert batch["report_len"][i] == ex["report_len"] and batch["has_report"][i]
    assert batch["lead_mask"][i].all() and batch["valid_len"][i] == 1000


def test_stream_is_deterministic_and_seeded(data):
  kw = dict(global_batch_size=8, process_index=0, process_count=1, with_record_id=True)
  a = _take(reader.train_batches(data, seed=3, **kw), 5)
  b = _take(reader.train_batches(data, seed=3, **kw), 5)
  c = _take(reader.train_batches(data, seed=4, **kw), 5)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any((x["record_id"] != y["record_id"]).any() for x, y in zip(a, c))


@pytest.mark.parametrize("start", [1, 7, 30])  # 30: past the first epoch (24 batches)
def test_start_step_resumes_exactly(data, start):
  kw = dict(global_batch_size=16, seed=11, process_index=1, process_count=2,
            shuffle_buffer=64, with_record_id=True)
  straight = _take(reader.train_batches(data, **kw), start + 4)
  resumed = _take(reader.train_batches(data, start_step=start, **kw), 4)
  for x, y in zip(straight[start:], resumed):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("start", [5, 13, 26])  # 26: past the first epoch (12 batches of 8)
def test_start_step_resumes_exactly_across_groups(data, start):
  # One file per group: every epoch is four groups, so resuming lands inside a group.
  kw = dict(global_batch_size=8, seed=5, process_index=0, process_count=1, shuffle_buffer=32,
            cycle_length=1, with_record_id=True)
  straight = _take(reader.train_batches(data, **kw), start + 3)
  resumed = _take(reader.train_batches(data, start_step=start, **kw), 3)
  for x, y in zip(straight[start:], resumed):
    np.testing.assert_array_equal(x["record_id"], y["record_id"])
    np.testing.assert_array_equal(x["ecg"], y["ecg"])


def test_a_large_step_resumes_without_reading_what_came_before(data):
  # Step 100 000 at global batch 256 is record 25.6 M of the stream: the position is found
  # from the shard lengths, and only its group's earlier records are read before it.
  info = reader.load_info(data)
  lengths = info.shard_lengths["train"]
  pos = stream.locate(lengths, seed=2, cycle_length=2, record=100_000 * 256)
  assert pos.offset < sum(sorted(lengths)[-2:])  # within one group of two shards
  assert pos.epoch == 100_000 * 256 // sum(lengths)
  # The stream resumed at step k equals the one resumed at k - 3 and read three steps on.
  kw = dict(global_batch_size=256, seed=2, process_index=0, process_count=1, shuffle_buffer=64,
            cycle_length=2, with_record_id=True)
  earlier = _take(reader.train_batches(data, start_step=99_997, **kw), 4)
  resumed = _take(reader.train_batches(data, start_step=100_000, **kw), 1)
  np.testing.assert_array_equal(earlier[3]["record_id"], resumed[0]["record_id"])
  np.testing.assert_array_equal(earlier[3]["ecg"], resumed[0]["ecg"])


def test_locate_walks_groups_in_the_epoch_order():
  lengths = [5, 7, 3, 9, 4]
  seen = [stream.locate(lengths, seed=1, cycle_length=2, record=r) for r in range(2 * 28)]
  # Offsets count up within a group and restart at 0 in the next; groups never go back.
  for a, b in zip(seen, seen[1:]):
    assert (b.group, b.offset) in ((a.group, a.offset + 1), (a.group + 1, 0))
  assert seen[28].epoch == 1 and seen[28].group == 3 and seen[28].offset == 0
  with pytest.raises(ValueError, match="no record"):
    stream.locate([0, 0], seed=1, cycle_length=2, record=0)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_processes_read_disjoint_files_covering_the_split(data, shard_records, count):
  per_shard = shard_records["train"]
  seen = []
  for index in range(count):
    expected = set().union(*per_shard[index::count])
    # shuffle_buffer=1 keeps file order, so one epoch of this process's files is exact.
    batches = _take(reader.train_batches(data, global_batch_size=4 * count, seed=0,
                                         shuffle_buffer=1, process_index=index,
                                         process_count=count, with_record_id=True),
                    len(expected) // 4)
    got = [r for b in batches for r in b["record_id"]]
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    seen.append(set(got))
  assert set().union(*seen) == set().union(*per_shard)
  assert sum(len(s) for s in seen) == 192


def test_train_errors(data):
  with pytest.raises(ValueError, match="shard files for 5 processes"):
    next(reader.train_batches(data, global_batch_size=10, seed=0, process_index=0,
                              process_count=5))
  with pytest.raises(ValueError, match="not a positive multiple"):
    next(reader.train_batches(data, global_batch_size=9, seed=0, process_index=0,
                              process_count=2))
  with pytest.raises(ValueError, match="split 'nope'"):
    next(reader.train_batches(data, split="nope", global_batch_size=8, seed=0,
                              process_index=0, process_count=1))


def test_default_process_is_jax(data):
  batch = next(reader.train_batches(data, global_batch_size=8, seed=0))
  assert batch["ecg"].shape == (8, 12, 1000)  # one JAX process: the whole global batch


@pytest.mark.parametrize("count,global_batch", [(1, 10), (2, 10), (3, 6), (5, 10)])
def test_eval_every_example_once_equal_batch_counts(data, shard_records, count, global_batch):
  info = reader.load_info(data)
  n_batches = reader.eval_batch_count(info, "val", global_batch, count)
  ids, lengths = [], []
  for index in range(count):
    batches = list(reader.eval_batches(data, split="val", global_batch_size=global_batch,
                                       process_index=index, process_count=count))
    lengths.append(len(batches))
    for b in batches:
      assert b["ecg"].shape == (global_batch // count, 12, 1000)
      assert b["mask"].dtype == np.bool_ and b["record_id"].dtype.kind == "U"
      pad = ~b["mask"]
      assert not b["ecg"][pad].any() and (b["record_id"][pad] == "").all()
      assert not b["has_report"][pad].any() and (b["report_ids"][pad] == 0).all()
      ids += list(b["record_id"][b["mask"]])
  assert lengths == [n_batches] * count and n_batches >= 1
  assert len(ids) == len(set(ids)) == 24
  assert set(ids) == set().union(*shard_records["val"])
  if count == 5:  # 4 shard files for 5 processes: the last one yields only padding.
    last = list(reader.eval_batches(data, split="val", global_batch_size=global_batch,
                                    process_index=4, process_count=5))
    assert len(last) == n_batches and not any(b["mask"].any() for b in last)
