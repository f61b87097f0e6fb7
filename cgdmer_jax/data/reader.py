"""Input pipeline: batches of numpy arrays from a dataset written by `data_pipelines.build`.

TensorFlow is used here as a CPU-only data tool (GPUs are hidden from it at import); model,
loss and step code never import this module's TensorFlow.

Batches (numpy, static shapes, ready for `jax.make_array_from_process_local_data`):

| key          | dtype   | shape      | meaning                                        |
|--------------|---------|------------|------------------------------------------------|
| ecg          | float32 | [B, 12, T] | millivolts (stored int16 uV / 1000)            |
| lead_mask    | bool    | [B, 12]    | lead recorded                                  |
| valid_len    | int32   | [B]        | samples before zero padding                    |
| report_ids   | int32   | [B, L]     | SentencePiece ids, PAD_ID after report_len     |
| report_len   | int32   | [B]        | ids before padding                             |
| has_report   | bool    | [B]        | report_len > 0                                 |
| mask         | bool    | [B]        | eval only: False on padding rows               |
| record_id    | str     | [B]        | eval only ('' on padding rows)                 |

B is the LOCAL batch: global_batch_size // process_count.

**Training stream determinism.** `train_batches` is a pure function of (shard files, seed,
process index, process count, shuffle_buffer, cycle_length): each process takes the files
`files[index::count]` and reads the stream of `data/stream.py` (epoch e visits them in the
order of a stateless shuffle seeded by (seed, e), `cycle_length` files at a time, interleaved
one record at a time through a seeded shuffle buffer); batches drop the remainder.
`start_step=k` starts that stream at record k * local_batch: only the records of the group of
`cycle_length` shards holding that record are read before it, so resuming costs the same at
step 100 000 as at step 10 (`data_pipelines.throughput --resume_steps` prints the times), and
the stream equals the straight stream from batch k on. Calling `tf.random.set_seed` in the
same process changes the stream (TensorFlow combines the global seed with the op seed): the
trainer must not.

**Damaged shards** (`on_corrupt`). 'error' (default): a record failing its CRC stops the
stream with `shard_scan.DamagedShardError`, naming the shard file, the record's byte offset
and how to rebuild it (TensorFlow's own error names no file: `shard_scan.locate` finds it).
'skip': shards are read through `shard_scan.records`, which skips a damaged record and goes
on with the next readable one; each skip is logged once and counted in a
`shard_scan.DamageLog` (records lost per file: the metadata's shard length minus the records
read). Skip mode reads records through Python (a generator per file): slower, for finishing a
run on a dataset that cannot be rebuilt in time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from collections.abc import Mapping

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from cgdmer_jax.data import features
from cgdmer_jax.data import shard_scan
from cgdmer_jax.data import stream

try:  # Hide GPUs from TensorFlow: it must never take accelerator memory from JAX.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices (then only GPUs it saw matter).
  pass

_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a converted dataset holds (from build_info.json + the TFDS metadata).

  Attributes:
    data_dir: the dataset folder.
    fs: sampling rate (Hz).
    seconds: stored duration.
    num_samples: samples per lead (T).
    max_report_len: padded report length (L).
    vocab_size: tokenizer vocabulary (0: no tokenizer, no reports).
    split_sizes: examples per split.
    shard_files: per split, the shard paths in shard order.
    shard_lengths: per split, examples per shard.
    tokenizer_path: path of the SentencePiece model, or None.
    build_info: the whole build_info.json.
  """
  data_dir: str
  fs: int
  seconds: float
  num_samples: int
  max_report_len: int
  vocab_size: int
  split_sizes: Mapping[str, int]
  shard_files: Mapping[str, tuple[str, ...]]
  shard_lengths: Mapping[str, tuple[int, ...]]
  tokenizer_path: str | None
  build_info: Mapping


def load_info(data_dir: str | os.PathLike) -> DatasetInfo:
  """Reads a converted dataset's metadata.

  Args:
    data_dir: the `--output` folder of `data_pipelines.build`.

  Returns:
    The `DatasetInfo`.

  Raises:
    FileNotFoundError: the folder is not a finished converted dataset.
  """
  path = epath.Path(data_dir)  # local or object storage (gs://) alike
  build_file = path / features.BUILD_INFO_FILE
  if not build_file.is_file() or not (path / "dataset_info.json").is_file():
    raise FileNotFoundError(
        f"{path} is not a converted dataset (no {features.BUILD_INFO_FILE} / "
        "dataset_info.json): run `python -m data_pipelines.build --output=...` first, or "
        "wait for a running build to finish")
  build = json.loads(build_file.read_text())
  splits = tfds.builder_from_directory(str(path)).info.splits
  files = {name: tuple(str(p) for p in s.filepaths) for name, s in splits.items()}
  lengths = {name: tuple(int(n) for n in s.shard_lengths) for name, s in splits.items()}
  tok = path / build["tokenizer"] if build.get("tokenizer") else None
  return DatasetInfo(
      data_dir=str(path), fs=int(build["fs"]), seconds=float(build["seconds"]),
      num_samples=int(build["num_samples"]), max_report_len=int(build["max_report_len"]),
      vocab_size=int(build["vocab_size"]),
      split_sizes={k: sum(v) for k, v in lengths.items()}, shard_files=files,
      shard_lengths=lengths, tokenizer_path=str(tok) if tok else None, build_info=build)


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not a positive multiple of "
                     f"the process count {process_count}")
  return global_batch_size // process_count


def _split_info(info: DatasetInfo, split: str):
  if split not in info.shard_files:
    raise ValueError(f"split {split!r} not in {info.data_dir}; it has "
                     f"{sorted(info.shard_files)}")
  return info.shard_files[split], info.shard_lengths[split]


def _parser(info: DatasetInfo, with_ids: bool, with_reports: bool = False):
  """A batched parse function built from `features.tfds_features` (as the writer encodes);
  `with_reports` also keeps each record's cleaned report text (`report`)."""
  feats = features.tfds_features(info.num_samples, info.max_report_len)
  spec = {}
  for name, tinfo in feats.get_serialized_info().items():
    spec[name] = tf.io.FixedLenFeature(tinfo.shape, tinfo.tf_dtype)
  ecg_feature = feats["ecg"]
  ecg_shape, ecg_dtype = tuple(ecg_feature.shape), tf.as_dtype(ecg_feature.np_dtype)
  keep = {"ecg", "lead_mask", "valid_len", "report_ids", "report_len"}
  if with_ids:
    keep.add("record_id")
  if with_reports:
    keep.add("report")
  spec = {k: v for k, v in spec.items() if k in keep}

  def parse(serialized):
    ex = tf.io.parse_example(serialized, spec)
    ecg = tf.io.decode_raw(ex["ecg"], ecg_dtype)  # little-endian, as TFDS encodes bytes
    ecg = tf.reshape(ecg, (-1,) + ecg_shape)
    out = {
        "ecg": tf.cast(ecg, tf.float32) / features.UNITS_PER_MV,
        "lead_mask": tf.cast(ex["lead_mask"], tf.bool),
        "valid_len": tf.cast(ex["valid_len"], tf.int32),
        "report_ids": tf.cast(ex["report_ids"], tf.int32),
        "report_len": tf.cast(ex["report_len"], tf.int32),
        "has_report": ex["report_len"] > 0,
    }
    if with_ids:
      out["record_id"] = ex["record_id"]
    if with_reports:
      out["report"] = ex["report"]
    return out

  return parse


def unparsable(info: DatasetInfo, serialized: list[bytes]) -> list[int]:
  """Indices of the serialized records that the training parser rejects (wrong schema).

  Args:
    info: the dataset's metadata (shapes of the schema).
    serialized: serialized examples.

  Returns:
    The indices, in order; [] when every record parses.
  """
  parse = _parser(info, True)
  try:
    if serialized:
      parse(tf.constant(serialized))
    return []
  except (tf.errors.InvalidArgumentError, ValueError):
    bad = []
    for i, record in enumerate(serialized):
      try:
        parse(tf.constant([record]))
      except (tf.errors.InvalidArgumentError, ValueError):
        bad.append(i)
    return bad


def _strings(values: np.ndarray) -> np.ndarray:
  """TF string tensors (numpy object arrays of bytes) as a numpy str array."""
  return np.array([v.decode("utf-8") for v in values.reshape(-1)], dtype=str).reshape(
      values.shape)


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  return opts


def local_train_files(info: DatasetInfo, split: str, index: int, count: int) -> tuple[str, ...]:
  """The shard files process `index` of `count` trains on: `files[index::count]`.

  Raises:
    ValueError: unknown split, fewer shard files than processes, or no example in them (an
      endless stream over empty files would never yield).
  """
  files, lengths = _split_info(info, split)
  if len(files) < count:
    raise ValueError(f"split {split!r} of {info.data_dir} has {len(files)} shard files for "
                     f"{count} processes: rebuild with --shards >= the process count")
  if not sum(lengths[index::count]):
    raise ValueError(f"split {split!r} of {info.data_dir} has no example in the files of "
                     f"process {index}")
  return tuple(files[index::count])


def train_batches(data_dir: str | os.PathLike, *, split: str = "train",
                  global_batch_size: int, seed: int, start_step: int = 0,
                  shuffle_buffer: int = 10_000, process_index: int | None = None,
                  process_count: int | None = None, cycle_length: int = 16,
                  with_record_id: bool = False, on_corrupt: str = "error",
                  damage_log: shard_scan.DamageLog | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless, shuffled, deterministic training batches (see the module docstring).

  Args:
    data_dir: converted dataset folder.
    split: split name.
    global_batch_size: batch over all processes (divisible by process_count).
    seed: shuffling seed.
    start_step: first batch to yield; batches 0..start_step-1 are skipped exactly.
    shuffle_buffer: examples in the shuffle buffer.
    process_index: this process (default `jax.process_index()`).
    process_count: processes (default `jax.process_count()`).
    cycle_length: files read at once by the interleave (part of the stream's definition).
    with_record_id: also yield `record_id` (str [B]); for checks, not for the device.
    on_corrupt: 'error' or 'skip' (damaged records; see the module docstring).
    damage_log: with 'skip', counts the damaged records skipped.

  Returns:
    An iterator of batch dicts (local batch).

  Raises:
    ValueError: batch size not divisible by the process count, unknown split, or fewer shard
      files than processes.
    shard_scan.DamagedShardError: (while iterating, on_corrupt='error') a record fails its
      checks.
  """
  info = load_info(data_dir)
  index, count = _process(process_index, process_count)
  local_batch = _local_batch(global_batch_size, count)
  if start_step < 0:
    raise ValueError("start_step must be >= 0")
  files, lengths = _split_info(info, split)
  records = shard_scan.records_fn(on_corrupt, damage_log, files, lengths)
  local_files = local_train_files(info, split, index, count)
  ds = stream.serialized(local_files, lengths[index::count], seed=seed,
                         shuffle_buffer=shuffle_buffer, cycle_length=cycle_length,
                         records=records, start_record=start_step * local_batch)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(_parser(info, with_record_id), num_parallel_calls=_AUTOTUNE, deterministic=True)
  ds = ds.prefetch(_AUTOTUNE).with_options(_options())
  for batch in shard_scan.named_errors(ds.as_numpy_iterator(), data_dir, files[index::count]):
    if with_record_id:
      batch["record_id"] = _strings(batch["record_id"])
    yield batch


def eval_batch_count(info: DatasetInfo, split: str, global_batch_size: int,
                     process_count: int) -> int:
  """Batches every process yields for `split` in `eval_batches` (from the shard lengths)."""
  _, lengths = _split_info(info, split)
  local_batch = _local_batch(global_batch_size, process_count)
  per_process = [sum(lengths[i::process_count]) for i in range(process_count)]
  return max(math.ceil(n / local_batch) for n in per_process) if per_process else 0


def _padding(info: DatasetInfo, rows: int, with_reports: bool = False
             ) -> dict[str, np.ndarray]:
  extra = {"report": np.full((rows,), "", dtype=str)} if with_reports else {}
  return {**extra,
      "ecg": np.zeros((rows, features.NUM_LEADS, info.num_samples), np.float32),
      "lead_mask": np.zeros((rows, features.NUM_LEADS), bool),
      "valid_len": np.zeros((rows,), np.int32),
      "report_ids": np.full((rows, info.max_report_len), features.PAD_ID, np.int32),
      "report_len": np.zeros((rows,), np.int32),
      "has_report": np.zeros((rows,), bool),
      "record_id": np.full((rows,), "", dtype=str),
      "mask": np.zeros((rows,), bool),
  }


def eval_batches(data_dir: str | os.PathLike, *, split: str, global_batch_size: int,
                 process_index: int | None = None, process_count: int | None = None,
                 on_corrupt: str = "error", damage_log: shard_scan.DamageLog | None = None,
                 with_reports: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split`, every example exactly once across processes, padded batches.

  Process i reads the shard files `files[i::count]` in order. The last batch is padded and
  processes with fewer examples add fully padded batches, so every process yields exactly
  `eval_batch_count(...)` batches (computed from the metadata's shard lengths).

  Args:
    data_dir: converted dataset folder.
    split: split name.
    global_batch_size: batch over all processes (divisible by process_count).
    process_index: this process (default `jax.process_index()`).
    process_count: processes (default `jax.process_count()`).
    on_corrupt: as in `train_batches` (skipped records become padding rows).
    damage_log: with 'skip', counts the damaged records skipped.
    with_reports: also yield each record's cleaned report text (`report`, str; '' on
      padding rows).

  Returns:
    An iterator of batch dicts with `mask` (False on padding rows) and `record_id`.
  """
  info = load_info(data_dir)
  files, lengths = _split_info(info, split)
  records = shard_scan.records_fn(on_corrupt, damage_log, files, lengths)
  index, count = _process(process_index, process_count)
  local_batch = _local_batch(global_batch_size, count)
  total = eval_batch_count(info, split, global_batch_size, count)
  local_files = list(files[index::count])
  yielded = 0
  if local_files:
    ds = tf.data.Dataset.from_tensor_slices(local_files).flat_map(records).batch(local_batch)
    ds = ds.map(_parser(info, True, with_reports), num_parallel_calls=_AUTOTUNE,
                deterministic=True)
    ds = ds.prefetch(_AUTOTUNE).with_options(_options())
    for batch in shard_scan.named_errors(ds.as_numpy_iterator(), data_dir, local_files):
      rows = batch["ecg"].shape[0]
      batch["record_id"] = _strings(batch["record_id"])
      if with_reports:
        batch["report"] = _strings(batch["report"])
      batch["mask"] = np.ones((rows,), bool)
      if rows < local_batch:
        pad = _padding(info, local_batch - rows, with_reports)
        batch = {k: np.concatenate([v, pad[k].astype(v.dtype)]) for k, v in batch.items()}
      yielded += 1
      yield batch
  for _ in range(total - yielded):
    yield _padding(info, local_batch, with_reports)
