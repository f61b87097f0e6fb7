"""What every source reader shares: the record types, the errors and the `Source` interface.

A source knows one on-disk layout. It can LIST its records cheaply (ids, patients, reports,
split hints; no signal is read) and READ one record by its id, the record's path relative to
the input root in posix form and without extension (`records100/00000/00008_lr`,
`WFDBRecords/01/010/JS00001`, `A1980` for a `.mat`). Reading returns a `RawRecord`: the signal
in millivolts with the channel names as the file gives them; canonicalisation (lead order,
resampling, cropping) is `data_pipelines.signal`'s job.

Record ids come from untrusted files (CSV rows, directory names), so every path is built with
`resolve_record`, which refuses anything that would leave the input root.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import pathlib
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any
from typing import ClassVar

import numpy as np

from data_pipelines.errors import Rejected  # noqa: F401 (sources raise it as base.Rejected)


class LayoutError(ValueError):
  """The input folder does not have the layout the source expects (a usage error)."""


def require_local(path: str | os.PathLike, what: str) -> None:
  """Refuse an object-storage URL where records are read from files (one-line error).

  Raw records are read by wfdb and scipy, which open local files only; `pathlib` would turn
  `gs://b/x` into the local path `gs:/b/x` and report it missing, which misleads.
  """
  text = os.fspath(path)
  if "://" in text:
    raise LayoutError(f"{what} {text} is object storage; raw records are read from local "
                      "files only: copy the folder to local disk (gcloud storage cp -r) or "
                      "mount the bucket (gcsfuse)")


@dataclasses.dataclass(frozen=True)
class RecordRef:
  """One listed record, known without reading its signal.

  Attributes:
    record: posix path relative to the input root, without extension; unique in a source.
    patient: patient id; decides the split.
    report: the raw free-text report ('' when the source has none).
    split_hint: 'train' | 'val' | 'test' when the dataset defines splits (PTB-XL folds).
    meta: small json-able facts from the listing (PTB-XL ecg_id, strat_fold, scp_codes...).
  """
  record: str
  patient: str
  report: str = ""
  split_hint: str | None = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RawRecord:
  """One record as read from disk, before canonicalisation.

  Attributes:
    record: as in `RecordRef`.
    patient: as in `RecordRef`.
    signal: float [T, C] in millivolts (channels whose units are not a voltage are dropped
      by the reader and listed in meta['dropped_channels']).
    leads: C channel names as written in the file.
    fs: sampling rate of `signal` in Hz.
    report: raw report ('' if none).
    meta: facts from the file (age, sex, SNOMED `dx` codes, header comments...).
  """
  record: str
  patient: str
  signal: np.ndarray
  leads: tuple[str, ...]
  fs: float
  report: str = ""
  meta: dict = dataclasses.field(default_factory=dict)


def resolve_record(root: pathlib.Path, record: str, suffix: str = "") -> pathlib.Path:
  """The file of `record` under `root`, refusing ids that would escape the root.

  Args:
    root: the input root.
    record: a record id (posix path relative to the root).
    suffix: appended to the id ('.hea', '.mat', '' for WFDB record names).

  Returns:
    `root` joined with the id, normalised.

  Raises:
    Rejected: for absolute ids, '..' components, backslashes or NUL bytes.
  """
  if (not record or "\x00" in record or "\\" in record or record.startswith("/")
      or ".." in record.split("/")):
    raise Rejected(f"unsafe record path {record!r}")
  # normpath, not resolve(): no syscalls, and the checks above already exclude every way a
  # relative id could climb out of the root.
  path = pathlib.Path(os.path.normpath(root / (record + suffix)))
  if os.path.commonpath([path, os.path.normpath(root)]) != os.path.normpath(root):
    raise Rejected(f"unsafe record path {record!r} (leaves the input root)")
  return path


def walk(root: pathlib.Path, suffix: str, under: str = "") -> Iterator[str]:
  """Relative posix paths (without `suffix`) of the files ending in `suffix`, sorted.

  Hidden folders and files are skipped.
  """
  base = root / under if under else root
  for dirpath, dirnames, filenames in os.walk(base):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    rel_dir = pathlib.Path(dirpath).relative_to(root).as_posix()
    for name in sorted(filenames):
      if name.endswith(suffix) and not name.startswith("."):
        stem = name[:-len(suffix)] if suffix else name
        yield stem if rel_dir == "." else f"{rel_dir}/{stem}"


class Source(abc.ABC):
  """A reader for one layout. Subclasses set `name` and implement the abstract methods.

  Constructing a source checks the layout (raising `LayoutError`); `list_records` and `read`
  never raise for a single bad record: listing skips nothing silently (a record whose files
  are broken is listed and then rejected by `read` with a reason).
  """

  name: ClassVar[str]
  # Whether the layout carries free-text reports (only these can train a tokenizer).
  has_reports: ClassVar[bool] = False

  def __init__(self, root: str | os.PathLike, **options):
    require_local(root, "input folder")
    self.root = pathlib.Path(root)
    if not self.root.is_dir():
      raise LayoutError(f"input folder {self.root} does not exist or is not a folder")
    self.options = options
    self._index: dict[str, RecordRef] | None = None
    self.check_layout()

  @abc.abstractmethod
  def check_layout(self) -> None:
    """Raises `LayoutError` with a clear message when the folder is not this layout."""

  @abc.abstractmethod
  def list_records(self) -> Iterator[RecordRef]:
    """Every record of the input, in a deterministic order, without reading signals."""

  @abc.abstractmethod
  def read_signal(self, record: str, max_seconds: float | None = None
                  ) -> tuple[np.ndarray, tuple[str, ...], float, dict]:
    """(signal [T, C] mV, channel names, fs, meta) of one record; raises on failure.

    `max_seconds` lets a source read only the start of long recordings (at least that many
    seconds are returned when the record has them); sources of short records ignore it.
    """

  def lookup(self, record: str) -> RecordRef:
    """The listing entry of `record` (the listing is built once and cached)."""
    if self._index is None:
      self._index = {ref.record: ref for ref in self.list_records()}
    if record not in self._index:
      raise Rejected(f"record {record!r} is not listed by source {self.name!r}")
    return self._index[record]

  def read(self, ref: RecordRef | str, max_seconds: float | None = None) -> RawRecord:
    """Reads one record.

    Args:
      ref: a listing entry, or a record id (then looked up in the listing for its patient
        and report).
      max_seconds: see `read_signal`.

    Returns:
      The `RawRecord`.
    """
    if isinstance(ref, str):
      ref = self.lookup(ref)
    signal, leads, fs, meta = self.read_signal(ref.record, max_seconds)
    return RawRecord(record=ref.record, patient=ref.patient, signal=signal, leads=leads,
                     fs=float(fs), report=ref.report, meta={**ref.meta, **meta})
