r"""Checks a converted dataset end to end: every shard read, every record parsed and counted.

Usage:
  python -m data_pipelines.verify --data_dir=/data/mimic_500
  python -m data_pipelines.verify --data_dir=gs://bucket/mimic_500

Meant for before a long job and after copying a dataset to a cluster. For every shard listed
in the TFDS metadata it reads every record through TensorFlow's record reader (length and data
CRC32C), parses it against the record schema as the trainer does (`reader.unparsable`), and
compares the records found with the shard length of the TFDS metadata and with the `written`
rows of manifest.csv; the per-split totals are compared with build_info.json. Every problem is
printed with its file (and byte offset for a damaged record).

On object storage (a `gs://` URL) the shards are read through `tf.data.TFRecordDataset`: the
same checks, but TensorFlow cannot read past a damaged record, so a shard's scan stops at its
first damage (named with its offset); a local copy is scanned past it.

A damaged shard is rebuilt by deleting it and rerunning the same `data_pipelines.build`
command: only missing shards are converted again, byte-identical.

Exit status: 0 nothing damaged; 1 damage found (listed); 2 not a converted dataset.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
import sys

from absl import flags
from absl import logging

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data_pipelines import tensorflow_quiet  # first: TF is loaded quietly

tf = tensorflow_quiet.load()

import tqdm

from cgdmer_jax import cli
from cgdmer_jax.data import features
from cgdmer_jax.data import reader
from cgdmer_jax.data import shard_scan
from data_pipelines import tfrecord

_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "The --output folder (or gs:// URL) of data_pipelines.build.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")

_PARSE_BATCH = 256


@dataclasses.dataclass
class Report:
  """What `verify` found: problems (one line each, naming the file) and what was read."""
  problems: list[str]
  shards: int
  records: int
  bytes: int

  @property
  def ok(self) -> bool:
    return not self.problems

  def format(self) -> str:
    head = (f"{self.shards} shards, {self.records} records, {self.bytes / 2**20:.1f} MiB "
            "read")
    if self.ok:
      return f"{head}: no damage found"
    return "\n".join([f"{head}: {len(self.problems)} problems"] +
                     [f"  {p}" for p in self.problems])


def _manifest_counts(data_dir) -> dict[tuple[str, int], int] | None:
  path = data_dir / features.MANIFEST_FILE
  if not path.is_file():
    return None
  out = collections.Counter()
  text = path.read_bytes().decode("utf-8")
  for row in csv.DictReader(io.StringIO(text, newline="")):
    if row["status"] == "written":
      out[(row["split"], int(row["shard"]))] += 1
  return out


def _stream_records(path: str, on_damage):
  """The records of a shard on object storage, up to its first damage (`tf.data` cannot go on
  past it; `shard_scan.records` needs a local file)."""
  it = iter(tf.data.TFRecordDataset(path))
  while True:
    try:
      record = next(it)
    except StopIteration:
      return
    except tf.errors.DataLossError as e:
      reason = (getattr(e, "message", str(e)).split(" [Op:")[0] + "; the records after it "
                "are not read on object storage: copy the shard to a local disk to scan past it")
      offset = shard_scan.error_offset(reason)
      on_damage(f"{path} ({reason})" if offset is None else
                shard_scan.Damage(path, offset, reason))
      return
    yield record.numpy()


def _read_shard(info, path: str, problems: list[str]) -> int:
  """Records of one shard that read and parse; problems appended."""
  good, batch = 0, []

  def flush():
    nonlocal good
    for i in reader.unparsable(info, batch):
      problems.append(f"{path}: record {good + i} does not parse against the record schema")
    good += len(batch)
    batch.clear()

  scan = _stream_records if tfrecord.is_object_storage(path) else shard_scan.records
  for record in scan(path, lambda d: problems.append(f"damaged record: {d}")):
    batch.append(record)
    if len(batch) == _PARSE_BATCH:
      flush()
  flush()
  return good


def verify(data_dir: str | os.PathLike, progress: bool = False) -> Report:
  """Reads and checks every shard of a converted dataset (see the module docstring).

  Args:
    data_dir: the dataset folder.
    progress: show a progress bar over the bytes read.

  Returns:
    The `Report`.

  Raises:
    FileNotFoundError: the folder is not a finished converted dataset.
  """
  info = reader.load_info(data_dir)
  root = tfrecord.output_path(data_dir)
  manifest = _manifest_counts(root)
  problems = [] if manifest is not None else [f"{root / features.MANIFEST_FILE} is missing"]
  files = [(split, index, path) for split, paths in info.shard_files.items()
           for index, path in enumerate(paths)]
  sizes = {path: tfrecord.size(path) for _, _, path in files
           if tfrecord.output_path(path).is_file()}
  bar = tqdm.tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, disable=not progress,
                  desc=f"verify {root.name}")
  records = 0
  try:
    for split, index, path in files:
      if path not in sizes:
        problems.append(f"{path}: missing")
        continue
      n = _read_shard(info, path, problems)
      records += n
      bar.update(sizes[path])
      expected = info.shard_lengths[split][index]
      if n != expected:
        problems.append(f"{path}: {n} readable records, the TFDS metadata says {expected}")
      if manifest is not None and manifest.get((split, index), 0) != expected:
        problems.append(f"{path}: manifest.csv lists {manifest.get((split, index), 0)} "
                        f"written records, the TFDS metadata {expected}")
  finally:
    bar.close()
  for split, counts in info.build_info.get("counts", {}).get("by_split", {}).items():
    if counts.get("written", 0) != info.split_sizes.get(split, 0):
      problems.append(f"split {split}: build_info.json counts {counts.get('written', 0)} "
                      f"written, the TFDS metadata {info.split_sizes.get(split, 0)}")
  return Report(problems, len(files), records, sum(sizes.values()))


def main(argv) -> int:
  if len(argv) > 1:
    print(f"unexpected arguments: {argv[1:]}", file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)  # TFDS logs every metadata file it loads
  try:
    report = verify(_DATA_DIR.value, progress=_PROGRESS.value)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(report.format())
  if not report.ok:
    print("A damaged shard is rebuilt by deleting it and rerunning the same "
          "`python -m data_pipelines.build` command.", file=sys.stderr)
  return 0 if report.ok else 1


if __name__ == "__main__":
  flags.mark_flags_as_required(["data_dir"])
  cli.run(main)
