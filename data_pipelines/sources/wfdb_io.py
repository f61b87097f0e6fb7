"""Reading WFDB records through `wfdb`, the way every WFDB-based source does it.

Owns: `read_wfdb` (units to millivolts, multi-frequency and multi-segment records, errors
turned into `Rejected` reasons) with the strict header and signal-file checks of
`wfdb_checks`, the CinC header-comment parser, the multi-segment child detection of
the generic folder walk, and `fast_header_parsing`.

Multi-frequency records (`212x4`: some channels have several samples per frame) are read with
`smooth_frames=False`, so an ECG channel keeps its own rate (fs x samples-per-frame) instead
of being averaged down to the frame rate. The channels kept are those at the highest rate
among the channels named like a standard lead (all channels when none is); channels at other
rates are dropped (listed in meta['dropped_channels']). Channels whose units are not a
voltage (mmHg, NU, Ohm...) are dropped the same way.

`fast_header_parsing`: wfdb 4.3.1 parses every header field through scalar `DataFrame.loc`
lookups in its field-specification tables, ~240 of them per 12-lead header; with pandas 3
that is ~3.5 ms of the ~4.5 ms `rdsamp` of a PTB-XL record. While reading, the three tables
are swapped for read-only dict-backed stand-ins holding the same cells (same objects, so the
parse is unchanged; `tests/test_data_sources.py` compares both on every shared record).

Malformed records are rejected, never read with a guessed field: `wfdb_checks` (the
header re-parsed and compared with what wfdb read; the signal files against the header).
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import re
import threading
from collections.abc import Iterable

import numpy as np
import wfdb
from wfdb.io import _header as wfdb_header

from data_pipelines import signal as signal_lib
from data_pipelines.sources import wfdb_checks
from data_pipelines.sources.base import Rejected

# Multipliers from a channel's units to millivolts; other units are not a voltage.
_TO_MV = {"mv": 1.0, "uv": 1e-3, "\u00b5v": 1e-3, "\u03bcv": 1e-3, "v": 1e3, "nv": 1e-6}

_SPEC_NAMES = ("RECORD_SPECS", "SIGNAL_SPECS", "SEGMENT_SPECS")
_swap_lock = threading.RLock()


class _Cells:
  """`.loc[row, col]` over a dict."""

  def __init__(self, cells):
    self._cells = cells

  def __getitem__(self, key):
    return self._cells[key]


class _SpecTable:
  """Read-only stand-in for one wfdb field-specification DataFrame (`.index`, `.loc[r, c]`)."""

  def __init__(self, frame):
    # Tuples: iterating a pandas Index of arrow strings is itself slow.
    self.index = tuple(frame.index)
    self.columns = tuple(frame.columns)
    self.loc = _Cells({(r, c): frame.at[r, c] for r in frame.index for c in frame.columns})


_TABLES = None


def _spec_tables():
  """(wfdb's tables, their stand-ins), built on first use."""
  global _TABLES
  if _TABLES is None:
    originals = tuple(getattr(wfdb_header, n, None) for n in _SPEC_NAMES)
    if all(hasattr(t, "at") and hasattr(t, "index") for t in originals):
      _TABLES = (originals, tuple(_SpecTable(t) for t in originals))
    else:  # A wfdb without these tables: read at its own speed.
      _TABLES = (originals, originals)
  return _TABLES


@contextlib.contextmanager
def fast_header_parsing():
  """Swaps wfdb's header spec tables for dict-backed ones while the block runs.

  The swap is process-global, so it holds a lock: threads reading through this function are
  serialised, and code outside it always sees wfdb's own tables.
  """
  originals, fast = _spec_tables()
  with _swap_lock:
    for name, table in zip(_SPEC_NAMES, fast):
      setattr(wfdb_header, name, table)
    try:
      yield
    finally:
      for name, table in zip(_SPEC_NAMES, originals):
        setattr(wfdb_header, name, table)


def _mv_scale(units: str | None) -> float | None:
  if units is None:
    return 1.0  # WFDB's default unit is the millivolt.
  return _TO_MV.get(units.strip().lower())


def read_wfdb(path: pathlib.Path, root: pathlib.Path | None = None,
              max_seconds: float | None = None
              ) -> tuple[np.ndarray, tuple[str, ...], float, dict]:
  """Reads one WFDB record with `wfdb.rdrecord`.

  Args:
    path: the record path without extension.
    root: the input root, only to shorten paths in error messages.
    max_seconds: read only the first ceil(max_seconds * fs) frames (the header is parsed
      once more to know fs and the length); None reads the whole record.

  Returns:
    (signal float64 [T, C] in mV, channel names, fs in Hz, meta with 'comments',
    'dropped_channels', 'fs_frame' and 'samples_per_frame').

  Raises:
    Rejected: the header or signal files cannot be read (reason names the error), or a
      signal file is shorter than its header declares.
  """
  try:
    with fast_header_parsing():
      sampto = None
      header = wfdb.rdheader(str(path))
      wfdb_checks.check_header(pathlib.Path(path), header)
      if max_seconds is not None:
        if header.fs and header.sig_len:
          sampto = min(int(header.sig_len), math.ceil(round(max_seconds * header.fs, 6)))
      rec = wfdb.rdrecord(str(path), smooth_frames=False, sampto=sampto)
  except Rejected:
    raise
  except Exception as e:
    msg = str(e)
    if root is not None:
      msg = msg.replace(str(root.resolve()) + "/", "").replace(str(root) + "/", "")
    raise Rejected(f"unreadable WFDB record ({type(e).__name__}: {msg})") from e
  names = [str(n) for n in (rec.sig_name or [])]
  spf = list(rec.samps_per_frame or [1] * len(names))
  units = list(rec.units or [None] * len(names))
  dropped, usable = [], []
  for i, name in enumerate(names):
    if _mv_scale(units[i]) is None:
      dropped.append(f"{name} [{units[i]}]")
    else:
      usable.append(i)
  named = [i for i in usable if signal_lib.canonical_lead(names[i]) is not None]
  top = max((spf[i] for i in (named or usable)), default=1)
  keep = [i for i in usable if spf[i] == top]
  dropped += [f"{names[i]} [{spf[i]} samples/frame]" for i in usable if spf[i] != top]
  if keep:
    sig = np.stack([np.asarray(rec.e_p_signal[i], dtype=np.float64) * _mv_scale(units[i])
                    for i in keep], axis=1)
  else:
    sig = np.zeros((int(rec.sig_len or 0), 0))
  meta = {"comments": [c for c in (rec.comments or [])][:32], "dropped_channels": dropped,
          "fs_frame": float(rec.fs), "samples_per_frame": int(top)}
  return sig, tuple(names[i] for i in keep), float(rec.fs) * top, meta


_COMMENT = re.compile(r"^\s*([A-Za-z][A-Za-z _]*?)\s*:\s*(.*?)\s*$")


def parse_cinc_comments(comments: Iterable[str]) -> dict:
  """The `#Age/#Sex/#Dx/#Rx/#Hx/#Sx` lines of a PhysioNet/CinC 2020/2021 header.

  Args:
    comments: header comment lines without the leading '#'.

  Returns:
    {'age': int | None, 'sex': str, 'dx': [SNOMED-CT code strings] ([] when blank), plus
    'rx', 'hx', 'sx' as written}.
  """
  out: dict = {"age": None, "sex": "", "dx": []}
  for line in comments:
    m = _COMMENT.match(line)
    if not m:
      continue
    key, value = m.group(1).strip().lower(), m.group(2)
    if key == "age":
      out["age"] = int(value) if value.isdigit() else None
    elif key == "sex":
      out["sex"] = value
    elif key == "dx":
      out["dx"] = [c.strip() for c in value.split(",") if c.strip()]
    elif key in ("rx", "hx", "sx"):
      out[key] = value
  return out


def segment_children(root: pathlib.Path, records: Iterable[str]) -> set[str]:
  """The records that are segments (or the layout header) of a multi-segment record.

  A multi-segment header's record line reads `name/num_segments ...` and its next lines name
  the segments, which are WFDB records themselves; they are parts, not records of their own.

  Args:
    root: the input root.
    records: record ids (relative paths without '.hea').

  Returns:
    The ids of the segment records among them.
  """
  children = set()
  for record in records:
    try:
      with open(root / f"{record}.hea", encoding="ascii", errors="ignore") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError:
      continue
    if not lines or "/" not in lines[0].split()[0]:
      continue
    n_seg = lines[0].split()[0].split("/", 1)[1]
    folder = record.rsplit("/", 1)[0] + "/" if "/" in record else ""
    for line in lines[1:1 + int(n_seg) if n_seg.isdigit() else None]:
      seg = line.split()[0]
      if seg != "~":
        children.add(folder + seg)
  return children
