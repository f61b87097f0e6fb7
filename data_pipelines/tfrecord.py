"""Output files of the converter, on a local folder or object storage (`gs://bucket/...`).

Everything `data_pipelines.build` writes (shards, manifest parts, metadata, tokenizer, resume
state) and `data_pipelines.verify` reads goes through this module: `output_path` is a
`pathlib.Path` for a local folder (unchanged behaviour), an `etils.epath.Path` for a URL (the
file systems Orbax and TFDS use); shards go through TensorFlow's file systems, which read and
write both. The input folder of raw records stays local: wfdb reads local files.

What a file appearing under its final name relies on:

* **local (POSIX) path**: the bytes go to `<name>.tmp-<pid>`, are fsynced and moved into
  place with `os.replace`, an atomic rename: a reader sees no file or the whole file.
* **object storage**: there is no atomic rename (epath's rename is a copy and a delete), but
  writing one object is atomic by itself: the store (GCS, S3) makes an object visible only
  once its upload has completed, whole, replacing any earlier version; TensorFlow's and
  epath's GCS files upload when closed. So files are written straight to their final name,
  and a temporary-name file is never made there. A write cut short leaves no object, or
  (an error caught in this process) one that is deleted again.

Either way a shard counts as converted only once its manifest part exists, and the part is
written after the shard (`shard_worker`): a shard cut short is converted again on a rerun.

Shards (`AtomicShardWriter`): the records are written by TensorFlow's own
`tf.io.TFRecordWriter` (length + masked CRC32C framing), imported lazily so that only the
processes that write shards pay for the import. TensorFlow reports a failed write (a full
disk: `ResourceExhaustedError`) as one of its own errors; the writer raises it as the
`OSError` it is (errno ENOSPC for a full disk), so the converter handles it like any other
file-system error.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import pathlib
import re
import shutil

from etils import epath

from data_pipelines import tensorflow_quiet

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_object_storage(path: str | os.PathLike) -> bool:
  """A URL (`gs://`, `s3://`, ...): written through epath, no atomic rename."""
  return bool(_URL.match(os.fspath(path)))


def output_path(p: str | os.PathLike) -> pathlib.Path | epath.Path:
  """`epath.Path` of a URL, `pathlib.Path` of a local path."""
  return epath.Path(p) if is_object_storage(p) else pathlib.Path(p)


def write_atomic(dst: str | os.PathLike, data: bytes | str) -> None:
  """Writes `data` (str: UTF-8) so that `dst` is never seen partly written (module doc)."""
  data = data.encode("utf-8") if isinstance(data, str) else data
  if is_object_storage(dst):
    epath.Path(dst).write_bytes(data)  # one object upload, visible when complete
    return
  tmp = f"{os.fspath(dst)}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, dst)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Moves `src` to `dst`: an atomic rename locally; on object storage a copy (one object
  write, atomic) then a delete of `src`."""
  if is_object_storage(dst):
    epath.Path(src).replace(dst)
  else:
    os.replace(src, dst)


def rmtree(folder: str | os.PathLike) -> None:
  """Deletes a folder and everything in it, if present."""
  if is_object_storage(folder):
    p = epath.Path(folder)
    if p.exists():
      p.rmtree()
  else:
    shutil.rmtree(folder, ignore_errors=True)


def size(file: str | os.PathLike) -> int:
  """A file's size in bytes."""
  if is_object_storage(file):
    return epath.Path(file).stat().length
  return os.path.getsize(file)


def find(folder: str | os.PathLike, pattern: str) -> list:
  """Files matching `pattern` (a name pattern) anywhere under `folder` (`folder` included);
  on object storage by listing (epath refuses `**`)."""
  if not is_object_storage(folder):
    return list(pathlib.Path(folder).glob(f"**/{pattern}"))
  root = epath.Path(folder)
  if not root.exists():
    return []
  return [p / name for p, _, files in root.walk() for name in files
          if fnmatch.fnmatch(name, pattern)]


def _os_error(e: Exception, path: str) -> OSError:
  """The OSError of a TensorFlow file error (its message ends with the C library's text)."""
  message = getattr(e, "message", str(e))
  code = errno.ENOSPC if "No space left on device" in message else errno.EIO
  return OSError(code, os.strerror(code), path)


class AtomicShardWriter:
  """Writes a TFRecord file under a temporary name and renames it into place on `commit`.

  A reader globbing for shard names never sees a partial file: until `commit` the data is in
  `<path>.tmp-<pid>`, and `os.replace` is atomic on POSIX file systems. On object storage the
  data goes to `path` itself (`tmp_path == path`): TensorFlow uploads the object when the
  file is closed, and the store shows it only once complete. `abort` (or leaving the context
  manager on an exception) removes the temporary file (the object).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._direct = is_object_storage(self.path)
    self.tmp_path = self.path if self._direct else f"{self.path}.tmp-{os.getpid()}"
    tf = tensorflow_quiet.load()
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
    """Flushes to disk and moves the file to its final name (object storage: uploads it)."""
    self._close()
    if self._direct:
      return
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
    if self._direct:
      epath.Path(self.tmp_path).unlink(missing_ok=True)
    elif os.path.exists(self.tmp_path):
      os.remove(self.tmp_path)

  def __enter__(self) -> "AtomicShardWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.abort()
