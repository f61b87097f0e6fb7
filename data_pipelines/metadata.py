"""The side files of a converted dataset, written after every shard is complete.

Owns: `manifest.csv` (merged from the per-shard parts, one row per input record), the TFDS
metadata (`dataset_info.json`, `features.json`, so `tfds.builder_from_directory(output)`
works) and `features.BUILD_INFO_FILE`, the converter's own record of what was built (rates,
lengths, tokenizer, counts), which the reader requires and which is written last: a folder
without it is not a finished dataset.

Every file is written under a temporary name and renamed into place, in the order manifest,
features.json, dataset_info.json, build_info.json. On object storage (`--output=gs://...`)
each is one object written under its final name, or (the TFDS files) copied there from
`_build/metadata`: `tfrecord` says what that relies on.
"""

from __future__ import annotations

import collections
import csv
import importlib.metadata
import io
import json
import os
import re
from collections.abc import Sequence

from cgdmer_jax.data import features
from data_pipelines import shard_worker
from data_pipelines import tensorflow_quiet
from data_pipelines import tfrecord

# TensorFlow Datasets is imported inside `write_tfds_metadata`: the converter's process loads
# TensorFlow only after the conversion, so that it can fork its workers (`write._start_method`).

# Bumped when the stored format or the conversion changes the bytes of an output.
FORMAT_VERSION = 1


def tool_version() -> str:
  try:
    return importlib.metadata.version("cgdmer_jax")
  except Exception:
    return "unknown"


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
  """Writes `data` to `path` through a temporary file and an atomic rename (object storage:
  one object write; `tfrecord.write_atomic`)."""
  tfrecord.write_atomic(path, data)


def read_parts(output: str | os.PathLike, tasks: Sequence[shard_worker.ShardTask]
               ) -> list[dict]:
  """The manifest rows of all shards, in task order (split, shard, record order)."""
  rows = []
  for task in tasks:
    text = shard_worker.part_path(output, task).read_bytes().decode("utf-8")
    rows.extend(csv.DictReader(io.StringIO(text, newline="")))
  return rows


def reason_kind(reason: str) -> str:
  """The category of a rejection reason: its text before the first ':' or '('."""
  return re.split(r"[:(]", reason, maxsplit=1)[0].strip() or reason


def counts(rows: Sequence[dict]) -> dict:
  """Summary counts of manifest rows (written, rejected by reason, NaN, clipping)."""
  by_split = collections.defaultdict(lambda: {"written": 0, "rejected": 0})
  reasons = collections.Counter()
  out = {"listed": len(rows), "written": 0, "rejected": 0, "nan_samples": 0,
         "nan_records": 0, "clipped_samples": 0, "clipped_records": 0}
  for row in rows:
    out[row["status"]] += 1
    by_split[row["split"]][row["status"]] += 1
    if row["status"] == "rejected":
      reasons[reason_kind(row["reason"])] += 1
    else:
      nan, clipped = int(row["nan"] or 0), int(row["clipped"] or 0)
      out["nan_samples"] += nan
      out["nan_records"] += nan > 0
      out["clipped_samples"] += clipped
      out["clipped_records"] += clipped > 0
  out["by_split"] = dict(sorted(by_split.items()))
  out["rejected_by_reason"] = dict(reasons.most_common())
  return out


def write_manifest(output: str | os.PathLike, rows: Sequence[dict]) -> None:
  lines = _csv_text(rows)
  atomic_write(tfrecord.output_path(output) / features.MANIFEST_FILE, lines)


def _csv_text(rows: Sequence[dict]) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=shard_worker.MANIFEST_COLUMNS, lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  return buf.getvalue()


def write_tfds_metadata(output: str | os.PathLike, tasks: Sequence[shard_worker.ShardTask],
                        rows: Sequence[dict], num_samples: int, max_report_len: int,
                        description: str) -> None:
  """`dataset_info.json` + `features.json` with per-split shard lengths and sizes."""
  tensorflow_quiet.load()  # TensorFlow is loaded here, after the workers forked
  import tensorflow_datasets as tfds
  output = tfrecord.output_path(output)
  written = collections.Counter((r["split"], int(r["shard"])) for r in rows
                                if r["status"] == "written")
  template = tfds.core.ShardedFileTemplate(
      data_dir=tfds.core.Path(output), template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=features.DATASET_NAME, filetype_suffix="tfrecord")
  split_infos = []
  for split in features.SPLITS:
    split_tasks = [t for t in tasks if t.split == split]
    if not split_tasks:
      continue
    split_infos.append(tfds.core.SplitInfo(
        name=split,
        shard_lengths=[written[(split, t.index)] for t in split_tasks],
        num_bytes=sum(tfrecord.size(output / t.filename) for t in split_tasks),
        filename_template=template.replace(split=split)))
  identity = tfds.core.DatasetIdentity(
      name=features.DATASET_NAME, version=tfds.core.Version("1.0.0"), data_dir=str(output),
      module_name="data_pipelines.write")
  info = tfds.core.DatasetInfo(
      builder=identity, description=description,
      features=features.tfds_features(num_samples, max_report_len),
      split_dict=tfds.core.SplitDict(split_infos))
  staging = output / shard_worker.BUILD_DIR / "metadata"
  staging.mkdir(parents=True, exist_ok=True)
  info.write_to_directory(staging)
  for name in ("features.json", "dataset_info.json"):
    tfrecord.replace(staging / name, output / name)


def write_build_info(output: str | os.PathLike, info: dict) -> None:
  """`build_info.json` (sorted keys, so an identical build gives identical bytes)."""
  atomic_write(tfrecord.output_path(output) / features.BUILD_INFO_FILE,
               json.dumps(info, indent=2, sort_keys=True) + "\n")
