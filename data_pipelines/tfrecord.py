"""Atomic TFRecord shard files: written under a temporary name, renamed when complete.

The records are written by TensorFlow's own `tf.io.TFRecordWriter` (length + masked CRC32C
framing), imported lazily so that only the processes that write shards pay for the import.
TensorFlow reports a failed write (a full disk: `ResourceExhaustedError`) as one of its own
errors; the writer raises it as the `OSError` it is (errno ENOSPC for a full disk), so the
converter handles it like any other file-system error.
"""

from __future__ import annotations

import errno
import os


def _os_error(e: Exception, path: str) -> OSError:
  """The OSError of a TensorFlow file error (its message ends with the C library's text)."""
  message = getattr(e, "message", str(e))
  code = errno.ENOSPC if "No space left on device" in message else errno.EIO
  return OSError(code, os.strerror(code), path)


class AtomicShardWriter:
  """Writes a TFRecord file under a temporary name and renames it into place on `commit`.

  A reader globbing for shard names never sees a partial file: until `commit` the data is in
  `<path>.tmp-<pid>`, and `os.replace` is atomic on POSIX file systems. `abort` (or leaving
  the context manager on an exception) removes the temporary file.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self.tmp_path = f"{self.path}.tmp-{os.getpid()}"
    import tensorflow as tf
    self._writer = tf.io.TFRecordWriter(self.tmp_path)
    self._tf_error = tf.errors.OpError
    self._open = True
    self.num_records = 0
    # Framing adds 16 bytes per record (length, its CRC, the data CRC).
    self.num_bytes = 0

  def write(self, record: bytes) -> None:
    try:
      self._writer.write(record)
    except self._tf_error as e:
      raise _os_error(e, self.tmp_path) from e
    self.num_records += 1
    self.num_bytes += len(record) + 16

  def _close(self) -> None:
    if self._open:
      self._open = False
      try:
        self._writer.close()  # flushes: a full disk can show here first
      except self._tf_error as e:
        raise _os_error(e, self.tmp_path) from e

  def commit(self) -> None:
    """Flushes to disk and moves the file to its final name."""
    self._close()
    fd = os.open(self.tmp_path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(self.tmp_path, self.path)

  def abort(self) -> None:
    try:
      self._close()
    except OSError:
      pass  # the flush of a file being discarded (e.g. on a full disk): nothing to keep
    if os.path.exists(self.tmp_path):
      os.remove(self.tmp_path)

  def __enter__(self) -> "AtomicShardWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.abort()
