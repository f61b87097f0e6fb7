"""Finding single ECG records in a folder or a list, and reading them canonically.

Evaluation and the embedding CLI read records one by one, outside a conversion, but through
exactly the converter's code: the source readers (`wfdb_io` for every WFDB record, the CPSC
reader for header-less `.mat` files) and `signal.canonicalize`. A record is located by its
file: a `.hea` is a WFDB record (`wfdb_dir` source, which also covers PTB-XL, CinC and
ecg-arrhythmia files), a `.mat` with no `.hea` beside it an original CPSC 2018 record.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterable

from data_pipelines import signal as signal_lib
from data_pipelines import sources
from data_pipelines.sources import base as source_base
from data_pipelines.sources import wfdb_io
from data_pipelines.sources.base import walk


@dataclasses.dataclass(frozen=True)
class Located:
  """A record on disk: which source reads it, from which root, under which id."""
  source: str          # 'wfdb_dir' or 'cpsc_mat'
  root: pathlib.Path
  record: str          # posix path relative to root, no extension

  @property
  def path(self) -> str:
    return (self.root / self.record).as_posix()


def locate_file(path: str | os.PathLike) -> Located:
  """The record a file path (with or without its extension) names.

  Raises:
    FileNotFoundError: neither `<path>.hea` nor a header-less `<path>.mat` exists.
  """
  p = pathlib.Path(path)
  if p.suffix in (".hea", ".mat", ".dat"):
    p = p.with_suffix("")
  if p.with_suffix(".hea").is_file():
    return Located("wfdb_dir", p.parent, p.name)
  if p.with_suffix(".mat").is_file():
    return Located("cpsc_mat", p.parent, p.name)
  raise FileNotFoundError(f"no ECG record at {path} (looked for {p}.hea and {p}.mat)")


def records_in_folder(root: str | os.PathLike) -> list[Located]:
  """Every record under `root`, sorted: WFDB headers (segment headers of a multi-segment
  record are not records of their own) and header-less `.mat` files."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root} is not a folder")
  headers = list(walk(root, ".hea"))
  children = wfdb_io.segment_children(root, headers)
  out = [Located("wfdb_dir", root, r) for r in headers if r not in children]
  header_set = set(headers)
  out += [Located("cpsc_mat", root, r) for r in walk(root, ".mat") if r not in header_set]
  return sorted(out, key=lambda loc: loc.record)


def index_by_name(root: str | os.PathLike) -> dict[str, Located]:
  """{record file name without extension: Located} for every record under `root`.

  Raises:
    ValueError: two records under `root` share a name (the index would be ambiguous).
  """
  index: dict[str, Located] = {}
  for loc in records_in_folder(root):
    name = pathlib.PurePosixPath(loc.record).name
    if name in index:
      raise ValueError(f"two records named {name!r} under {root}: {index[name].record} and "
                       f"{loc.record}")
    index[name] = loc
  return index


def read_inputs(spec: str | os.PathLike) -> list[Located]:
  """The records of a folder, or of a text file listing one record path per line."""
  source_base.require_local(spec, "input")
  spec = pathlib.Path(spec)
  if spec.is_dir():
    return records_in_folder(spec)
  if spec.is_file():
    lines = [ln.strip() for ln in spec.read_text(encoding="utf-8").splitlines()]
    base = spec.parent
    return [locate_file(base / ln) for ln in lines if ln and not ln.startswith("#")]
  raise FileNotFoundError(f"{spec} is neither a folder of records nor a list file")


class CanonicalReader:
  """Reads located records canonically, opening each (source, root) once."""

  def __init__(self, config: signal_lib.Config):
    self.config = config
    self._sources: dict[tuple[str, str], sources.Source] = {}

  def _source(self, loc: Located) -> sources.Source:
    key = (loc.source, str(loc.root))
    if key not in self._sources:
      self._sources[key] = sources.get_source(loc.source, loc.root)
    return self._sources[key]

  def read(self, loc: Located) -> signal_lib.Canonical:
    """The canonical signal of one record.

    Raises:
      sources.Rejected: the record cannot be read or canonicalised (message = reason).
    """
    try:
      sig, leads, fs, _ = self._source(loc).read_signal(loc.record,
                                                        max_seconds=self.config.seconds)
    except sources.Rejected:
      raise
    except Exception as e:
      # Any reader failure on an untrusted file is a rejection with its reason, never a crash.
      raise sources.Rejected(f"{type(e).__name__}: {e}") from e
    return signal_lib.canonicalize(sig, leads, fs, self.config)

  def read_many(self, locs: Iterable[Located]):
    """Yields (Located, Canonical or None, reason) for each record, never raising."""
    for loc in locs:
      try:
        yield loc, self.read(loc), ""
      except sources.Rejected as e:
        yield loc, None, str(e)
