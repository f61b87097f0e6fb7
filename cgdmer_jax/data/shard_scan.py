"""Reading one TFRecord shard record by record, with damage located by file and byte offset.

TensorFlow's `TFRecordDataset` stops at the first record whose length or data CRC does not
match, with `DataLossError: corrupted record at <offset>` naming no file, and cannot go on
past it (`ignore_errors` ends the file there, dropping every later record). This module reads
a shard through TensorFlow's random-access record reader (same framing, same CRC checks) so
that a damaged record is named (`Damage`: file, offset, what failed) and the records after it
are still read:

* the damaged record's length header is tried first: when the record that follows it reads
  back whole, only the damaged record is lost (the usual case: bytes overwritten inside a
  record's payload);
* otherwise the next record start is searched byte by byte (only offsets whose 8-byte length
  fits in the file and points at another plausible header are tried with the reader), so a
  damaged header costs at most the records it hides.

The reader's damage handling lives here too: `records_fn` (the per-file record source of
`on_corrupt='error'|'skip'`), `DamageLog` (what a skipping stream skipped) and
`DamagedShardError` (a `DataLossError` with its file named: `named_errors`, `locate`). Used by
the reader and by `data_pipelines.verify`. TensorFlow is imported here; model and step code
never import this module.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
import struct
import threading
from collections.abc import Callable
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from absl import logging

# The class behind tensorflow.python.lib.io.tf_record.tf_record_random_reader, which tf.*
# does not export (TensorFlow is pinned in setup.cfg; tests/test_reader_faults.py uses it).
from tensorflow.python.lib.io import _pywrap_record_io

from data_pipelines import tfrecord

# length (8) + length CRC (4) before the data, data CRC (4) after it.
_HEADER = 12
_FOOTER = 4
_CHUNK = 1 << 20
_OFFSET = re.compile(r"(?:corrupted|truncated) record at (\d+)")


@dataclasses.dataclass(frozen=True)
class Damage:
  """A record that cannot be read: the shard file, the byte offset of its header, the reason."""
  path: str
  offset: int
  reason: str

  def __str__(self) -> str:
    return f"{self.path} at byte {self.offset} ({self.reason})"


def error_offset(message: str) -> int | None:
  """The byte offset in a TensorFlow `DataLossError` message.

  Args:
    message: the error's message ('... corrupted record at 4041747 ...').

  Returns:
    The offset, or None when the message holds none.
  """
  m = _OFFSET.search(message)
  return int(m.group(1)) if m else None


def _reads(reader, offset: int, size: int) -> bool:
  if offset == size:
    return True  # the end of the file is a record boundary
  try:
    reader.read(offset)
    return True
  except (tf.errors.DataLossError, IndexError):
    return False


def _length(data, at: int) -> int | None:
  return struct.unpack_from("<Q", data, at)[0] if at + 8 <= len(data) else None


def _next_start(path: str, reader, offset: int, size: int) -> int:
  """The first offset after a damaged record at `offset` where a whole record reads back
  (or `size`: the damage reaches the end of the file)."""
  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    length = _length(data, offset)
    if length is not None:
      jump = offset + _HEADER + length + _FOOTER
      if jump <= size and _reads(reader, jump, size):
        return jump
    # Every 8-byte window read as a length, a chunk at a time: a record start has one that
    # ends inside the file, at the end or at another plausible header; only those offsets
    # are tried with the reader (a read at a wrong offset costs ~0.1 ms).
    view = np.frombuffer(data, np.uint8)
    for lo in range(offset + 1, size - 7, _CHUNK):
      hi = min(lo + _CHUNK, size - 7)
      lengths = np.zeros(hi - lo, np.uint64)
      for k in range(8):
        lengths |= view[lo + k:hi + k].astype(np.uint64) << np.uint64(8 * k)
      fits = (lengths > 0) & (lengths <= np.uint64(size))
      for i in np.flatnonzero(fits):
        start = lo + int(i)
        end = start + _HEADER + int(lengths[i]) + _FOOTER
        if end > size:
          continue
        following = _length(data, end) if end < size else None
        if end < size and (not following or end + _HEADER + following + _FOOTER > size):
          continue
        if _reads(reader, start, size):
          del view
          return start
    del view
  return size


def records(path: str | os.PathLike, on_damage: Callable[[Damage], None]
            ) -> Iterator[bytes]:
  """The readable records of one shard, in file order; `on_damage` is called for each damage.

  Args:
    path: the TFRecord file.
    on_damage: called with a `Damage` where a record fails its checks (then reading resumes
      at the next readable record, as the module docstring says).

  Returns:
    An iterator of serialized records.
  """
  path = os.fspath(path)
  size = os.path.getsize(path)
  reader = _pywrap_record_io.RandomRecordReader(path)
  offset = 0
  try:
    while offset < size:
      try:
        record, offset_next = reader.read(offset)
      except (tf.errors.DataLossError, IndexError) as e:
        on_damage(Damage(path, offset, getattr(e, "message", str(e)).split(" [Op:")[0]))
        offset = _next_start(path, reader, offset, size)
        continue
      yield record
      offset = offset_next
  finally:
    reader.close()


def record_starts(path: str | os.PathLike, until: int) -> set[int]:
  """Offsets of the record headers up to `until`, from the length fields alone (no CRC).

  Args:
    path: the TFRecord file.
    until: the last offset of interest.

  Returns:
    The set of header offsets <= `until` (past a damaged length they are meaningless).
  """
  starts, offset = set(), 0
  with open(path, "rb") as f:
    while offset <= until:
      f.seek(offset)
      head = f.read(8)
      if len(head) < 8:
        break
      starts.add(offset)
      offset += _HEADER + struct.unpack("<Q", head)[0] + _FOOTER
  return starts


def locate(paths, message: str) -> Damage | None:
  """The damaged record behind a `DataLossError` of a stream over `paths`, or None.

  The error gives only an offset (of the record's header when its length fails, of its data
  when the data fails): the damaged file is the one with a record header there that fails
  to read.

  Args:
    paths: the files the stream reads.
    message: the `DataLossError`'s message.

  Returns:
    The `Damage`, or None when no file matches.
  """
  offset = error_offset(message)
  if offset is None:
    return None
  reason = message.split(" [Op:")[0].split("}}")[-1].strip()
  for path in paths:
    path = os.fspath(path)
    if tfrecord.is_object_storage(path):  # no local file to scan; the error names the stream
      return None
    size = os.path.getsize(path)
    if size <= offset:
      continue
    starts = record_starts(path, offset)
    for start in (offset, offset - _HEADER):
      if start not in starts:
        continue
      reader = _pywrap_record_io.RandomRecordReader(path)
      try:
        if not _reads(reader, start, size):
          return Damage(path, start, reason)
      finally:
        reader.close()
  return None


ON_CORRUPT = ("error", "skip")


class DamagedShardError(RuntimeError):
  """A shard holds a record that fails its checks; `damage` names the file and offset."""

  def __init__(self, data_dir: str, damage: Damage | None, message: str):
    self.damage = damage
    where = (f"damaged TFRecord shard {damage.path}: the record at byte {damage.offset} "
             f"fails its checks ({damage.reason})" if damage else
             f"a TFRecord shard of {data_dir} is damaged ({message})")
    super().__init__(
        f"{where}. List every damaged shard with `python -m data_pipelines.verify "
        f"--data_dir={data_dir}`; rebuild a shard by deleting it and rerunning the same "
        "`python -m data_pipelines.build` command (only missing shards are converted), or "
        "train past damaged records with --config.data.on_corrupt=skip")


class DamageLog:
  """The damaged records a stream with on_corrupt='skip' has skipped (thread-safe)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._offsets: dict[str, set[int]] = {}
    self._lost: dict[str, int] = {}

  def add(self, damage: Damage) -> None:
    with self._lock:
      seen = self._offsets.setdefault(damage.path, set())
      if damage.offset in seen:
        return  # the same record met again in a later epoch
      seen.add(damage.offset)
    logging.warning("skipping a damaged record (on_corrupt=skip): %s", damage)

  def file_done(self, path: str, read: int, expected: int) -> None:
    """A whole pass over `path` read `read` of its `expected` records."""
    with self._lock:
      self._lost[path] = max(expected - read, 0)

  @property
  def count(self) -> int:
    """Damaged records skipped so far (each counted once, however many epochs meet it)."""
    with self._lock:
      return sum(max(len(self._offsets.get(p, ())), self._lost.get(p, 0))
                 for p in set(self._offsets) | set(self._lost))


def records_fn(on_corrupt: str, log: DamageLog | None, files, lengths):
  """The per-file record source of a reader stream.

  Args:
    on_corrupt: 'error' (TensorFlow's own reader) or 'skip' (`records`, damage logged).
    log: with 'skip', where damage is counted (a private log when None).
    files: the split's shard paths.
    lengths: their record counts from the metadata (the records a whole pass must read).

  Returns:
    `filename tensor -> tf.data.Dataset of serialized records`.

  Raises:
    ValueError: unknown `on_corrupt`.
  """
  if on_corrupt not in ON_CORRUPT:
    raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, not {on_corrupt!r}")
  if on_corrupt == "error":
    return tf.data.TFRecordDataset
  expected = dict(zip(files, lengths))
  log = log if log is not None else DamageLog()

  def readable(path: bytes):
    path = path.decode("utf-8")
    read = 0
    for record in records(path, log.add):
      read += 1
      yield record
    log.file_done(path, read, expected[path])

  return lambda f: tf.data.Dataset.from_generator(
      readable, args=(f,), output_signature=tf.TensorSpec((), tf.string))


def named_errors(batches, data_dir, files):
  """`batches`, with a `DataLossError` turned into a `DamagedShardError` naming the file.

  Args:
    batches: the stream's numpy iterator.
    data_dir: the dataset folder (for the message).
    files: the files the stream reads.

  Returns:
    The same batches.
  """
  try:
    yield from batches
  except tf.errors.DataLossError as e:
    damage = locate(files, e.message)
    raise DamagedShardError(str(data_dir), damage, e.message) from None
