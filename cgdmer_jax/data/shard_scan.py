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

Used by the reader (`on_corrupt='skip'`, and to name the file of a `DataLossError`) and by
`data_pipelines.verify`. TensorFlow is imported here; model and step code never import this.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
import struct
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
from tensorflow.python.lib.io import _pywrap_record_io  # pylint: disable=g-direct-tensorflow-import

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
  """The byte offset in a TensorFlow `DataLossError` message, or None."""
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
  """Offsets of the record headers before `until`, from the length fields alone (no CRC)."""
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
  """
  offset = error_offset(message)
  if offset is None:
    return None
  reason = message.split(" [Op:")[0].split("}}")[-1].strip()
  for path in paths:
    path = os.fspath(path)
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
