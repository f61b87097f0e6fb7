"""Converting one shard: the unit of work (and of resumption) of the converter.

A worker process is initialised once with a `WorkerSpec` (source, canonical-signal config,
tokenizer bytes) and then converts whole shards: for every record of the shard it reads,
canonicalises, tokenizes and serialises the example (through `features.tfds_features`, as
the reader parses it), writing a TFRecord file and the shard's manifest rows.

Completion protocol (what makes reruns resumable and interruptions harmless):

1. examples go to `<shard>.tmp-<pid>`, manifest rows to memory;
2. the shard file is fsynced and renamed to its final name;
3. the manifest part `_build/manifest/<part>.csv` is written last (`tfrecord.write_atomic`).
   A shard is complete iff its manifest part exists (and its file does); a crash between 2
   and 3 only means the shard is converted again.

On object storage (`--output=gs://...`) the shard is written straight to its final name in
step 1 and is there once step 2 closes it (`tfrecord` says what that relies on); step 3 is
unchanged, so a shard cut short is still converted again.

No record can crash a shard: any exception while converting a record becomes a `rejected`
manifest row with the exception as the reason. TensorFlow is imported only inside the worker
(`_State`, `tfrecord.AtomicShardWriter`), once per worker process: the converter's own process
imports this module and must not load TensorFlow before it forks the workers
(`write._start_method`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import re
import time
from typing import Any

import numpy as np

from cgdmer_jax.data import features
from data_pipelines import signal as signal_lib
from data_pipelines import sources
from data_pipelines import tensorflow_quiet
from data_pipelines import tfrecord
from data_pipelines import tokenizer as tokenizer_lib

MANIFEST_COLUMNS = ("record", "status", "reason", "split", "shard", "patient", "source",
                    "fs_in", "samples_in", "leads_found", "valid_len", "nan", "clipped",
                    "report_len")
BUILD_DIR = "_build"
PARTS_DIR = "manifest"


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
  """Everything a worker process needs, picklable."""
  source: str
  input: str
  source_options: dict
  signal: signal_lib.Config
  tokenizer_proto: bytes | None
  max_report_len: int
  output: str


@dataclasses.dataclass
class ShardTask:
  """One output shard: its split, index, and the records planned into it."""
  split: str
  index: int
  num_shards: int
  refs: list  # list[sources.RecordRef], already with cleaned reports

  @property
  def filename(self) -> str:
    return (f"{features.DATASET_NAME}-{self.split}.tfrecord-"
            f"{self.index:05d}-of-{self.num_shards:05d}")

  @property
  def part_name(self) -> str:
    return f"{self.split}-{self.index:05d}-of-{self.num_shards:05d}.csv"


def part_path(output: str | os.PathLike, task: ShardTask):
  """The manifest part of `task` (a `pathlib.Path`, or an `epath.Path` for a URL)."""
  return tfrecord.output_path(output) / BUILD_DIR / PARTS_DIR / task.part_name


def is_complete(output: str | os.PathLike, task: ShardTask) -> bool:
  shard = tfrecord.output_path(output) / task.filename
  return part_path(output, task).is_file() and shard.is_file()


class _State:
  """Per-process objects built once from a `WorkerSpec`."""

  def __init__(self, spec: WorkerSpec):
    # Imported for the side effect of loading it: TensorFlow's ~3 s import is paid here, once
    # per worker, not inside the first shard.
    tensorflow_quiet.load()
    from tensorflow_datasets.core import example_serializer
    self.spec = spec
    self.source = sources.get_source(spec.source, spec.input, **spec.source_options)
    self.tokenizer = (tokenizer_lib.from_bytes(spec.tokenizer_proto)
                      if spec.tokenizer_proto else None)
    self.features = features.tfds_features(spec.signal.num_samples, spec.max_report_len)
    self.serializer = example_serializer.ExampleSerializer(
        self.features.get_serialized_info())


_STATE: _State | None = None


def init_worker(spec: WorkerSpec) -> None:
  """Process-pool initializer (also called once in-process when --workers=1)."""
  global _STATE
  _STATE = _State(spec)


def _reason(e: BaseException, root: str) -> str:
  text = str(e) if isinstance(e, sources.Rejected) else f"{type(e).__name__}: {e}"
  text = text.replace(str(pathlib.Path(root).resolve()) + "/", "").replace(root + "/", "")
  return re.sub(r"\s+", " ", text).strip()[:300]


def convert_record(state: _State, ref) -> tuple[bytes | None, dict[str, Any]]:
  """(serialized example or None, manifest row) of one record."""
  spec = state.spec
  row: dict[str, Any] = dict.fromkeys(MANIFEST_COLUMNS, "")
  row.update(record=ref.record, patient=ref.patient, source=spec.source)
  try:
    raw = state.source.read(ref, max_seconds=spec.signal.seconds)
    row.update(fs_in=f"{raw.fs:g}", samples_in=raw.signal.shape[0])
    canon = signal_lib.canonicalize(raw.signal, raw.leads, raw.fs, spec.signal)
    if state.tokenizer is not None:
      ids, n_ids = state.tokenizer.encode(ref.report, spec.max_report_len)
    else:
      ids, n_ids = np.full(spec.max_report_len, features.PAD_ID, dtype=np.int64), 0
    example = {
        "record_id": ref.record,
        "patient_id": ref.patient,
        "source": spec.source,
        "ecg": canon.ecg,
        "valid_len": canon.valid_len,
        "lead_mask": canon.lead_mask.astype("int64"),
        "fs": spec.signal.fs,
        "report": ref.report,
        "report_ids": ids,
        "report_len": n_ids,
    }
    # deterministic=True sorts the Example's feature map; without it the byte order follows
    # the process's string hashing, so the same record would serialize differently in
    # different worker processes and reruns would not be byte-identical.
    data = state.serializer.get_tf_example(
        state.features.encode_example(example)).SerializeToString(deterministic=True)
  except Exception as e:
    row.update(status="rejected", reason=_reason(e, spec.input))
    return None, row
  row.update(status="written", leads_found=int(canon.lead_mask.sum()),
             valid_len=canon.valid_len, nan=canon.nan_count, clipped=canon.clipped,
             report_len=n_ids)
  return data, row


def convert_shard(task: ShardTask) -> dict[str, int]:
  """Converts one shard and commits it (protocol in the module docstring).

  Args:
    task: the shard.

  Returns:
    {'records': n, 'written': n, 'bytes': n, 'seconds': s} for progress reporting; s is this
    worker's time on the shard (its start-up excluded).
  """
  if _STATE is None:
    raise RuntimeError("init_worker was not called in this process")
  start = time.perf_counter()
  out = tfrecord.output_path(_STATE.spec.output)
  part = part_path(out, task)
  part.parent.mkdir(parents=True, exist_ok=True)
  text = io.StringIO(newline="")
  rows = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS)
  rows.writeheader()
  with tfrecord.AtomicShardWriter(out / task.filename) as writer:
    for ref in task.refs:
      data, row = convert_record(_STATE, ref)
      if data is not None:
        writer.write(data)
      row.update(split=task.split, shard=task.index)
      rows.writerow(row)
    writer.commit()
  tfrecord.write_atomic(part, text.getvalue())
  return {"records": len(task.refs), "written": writer.num_records, "bytes": writer.num_bytes,
          "seconds": time.perf_counter() - start}
