"""A stand-in bucket for tests: URL paths (`file://localhost/...`) taking every layer's remote
code path.

What a run with `--workdir=gs://bucket/run` goes through, and what stands in for it here:

* our code and Orbax's metadata files: `etils.epath` paths with a URL scheme. epath learns the
  `file://` scheme for the test and serves it from a local folder (the "bucket"), so every
  `epath.Path` operation keeps the URL, as with `gs://` (a `pathlib.Path` in the way would
  turn it into a relative `file:/...` folder: every test checks that none appears);
* Orbax's array data: TensorStore's GCS driver. Orbax is told that `file://` is GCS (its
  `is_gcs_path` and GCS-driver predicates are patched, as Orbax's own tests patch them), so it
  takes its object-storage path (no atomic rename: a `commit_success` file per step), and the
  driver spec it builds points at the same folder;
* tf.data shards, TFDS metadata and TensorBoard files: TensorFlow's file systems, which read
  `file://` URLs natively.

The workdir lock sees a URL and uses its object-storage protocol (write a token, settle, read
back). No network is touched: nothing here resolves a host or reads credentials.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from unittest import mock

from etils.epath import backend as backend_lib
from etils.epath import gpath
from etils.epath import register
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

SCHEME = "file"
PREFIX = "file://"
# epath reads `scheme://bucket/...`; TensorFlow reads `file://HOST/abs/path` as /abs/path.
HOST = "localhost"
_ROOT = f"{PREFIX}{HOST}"


def _local(path) -> str:
  text = os.fspath(path)
  return text[len(_ROOT):] if text.startswith(_ROOT) else text


def _url(path) -> str:
  return _ROOT + os.fspath(path)


class _Bucket(type(backend_lib.os_backend)):
  """epath's local backend behind `file://` URLs: the URL is kept, the bytes stay local."""

  def open(self, path, mode, *a, **k):
    return super().open(_local(path), mode, *a, **k)

  def exists(self, path):
    return super().exists(_local(path))

  def isdir(self, path):
    return super().isdir(_local(path))

  def listdir(self, path):
    return super().listdir(_local(path))

  def glob(self, path):
    return [_url(p) for p in super().glob(_local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for folder, dirs, files in super().walk(_local(top), top_down=top_down, on_error=on_error):
      yield _url(folder), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=0o777):
    return super().makedirs(_local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=0o777):
    return super().mkdir(_local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    return super().rmtree(_local(path))

  def remove(self, path):
    return super().remove(_local(path))

  def rename(self, path, dst):
    return super().rename(_local(path), _local(dst))

  def replace(self, path, dst):
    return super().replace(_local(path), _local(dst))

  def copy(self, path, dst, *, overwrite):
    return super().copy(_local(path), _local(dst), overwrite=overwrite)

  def stat(self, path):
    return super().stat(_local(path))


_BACKEND = _Bucket()
_REGISTERED = False


def _register_path_class() -> None:
  global _REGISTERED
  if not _REGISTERED:

    @register.register_path_cls(PREFIX)
    class FileUrlPath(gpath.PosixGPath):  # noqa: F841 (registered by the decorator)
      pass

    _REGISTERED = True


@contextlib.contextmanager
def object_store(bucket_dir: str | os.PathLike):
  """Yields a fresh `file://localhost<bucket_dir>/bucket-XXXX` root (see the module doc)."""
  _register_path_class()
  is_gcs, normalize = gcs_utils.is_gcs_path, ts_utils._normalize_path

  def kvstore(path: str) -> dict:
    return {"driver": "file", "path": _local(path)}

  patches = [
      mock.patch.object(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {SCHEME}),
      mock.patch.object(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + (PREFIX,)),
      mock.patch.dict(gpath._URI_MAP_ROOT, {PREFIX: f"/{SCHEME}/"}),
      mock.patch.dict(gpath._PREFIX_TO_BACKEND, {SCHEME: _BACKEND}),
      # With TensorFlow installed epath serves every URL scheme through TF; file:// through
      # the bucket's backend instead, so that Orbax's listings see what TensorStore wrote.
      mock.patch.object(gpath, "_is_tf_installed", lambda: False),
      mock.patch.object(gcs_utils, "is_gcs_path",
                        lambda p: os.fspath(p).startswith(PREFIX) or is_gcs(p)),
      mock.patch.object(ts_utils, "_use_gcs_driver", lambda d: d.startswith(("gs://", PREFIX))),
      mock.patch.object(ts_utils, "_normalize_path",
                        lambda d: normalize(d).replace(f"{SCHEME}:/", PREFIX)),
      mock.patch.object(gcs_utils, "get_kvstore_for_gcs", kvstore),
  ]
  with contextlib.ExitStack() as stack:
    for p in patches:
      stack.enter_context(p)
    root = os.path.join(os.path.abspath(bucket_dir), f"bucket-{uuid.uuid4().hex[:8]}")
    os.makedirs(root)
    yield _url(root)


def local_names_with_scheme(*roots: str | os.PathLike) -> list[str]:
  """Paths under `roots` whose name holds `file:` (what pathlib makes of a URL)."""
  out = []
  for root in roots:
    for folder, dirs, files in os.walk(root):
      out += [os.path.join(folder, n) for n in dirs + files if f"{SCHEME}:" in n]
  return out
