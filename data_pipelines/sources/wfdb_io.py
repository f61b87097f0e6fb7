"""Reading WFDB records through `wfdb`, the way every WFDB-based source does it.

Owns: `read_wfdb` (units to millivolts, multi-frequency and multi-segment records, errors
turned into `Rejected` reasons), the strict header and signal-file checks (`check_header`,
`check_signal_files`), the CinC header-comment parser, the multi-segment child detection of
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

Malformed records are rejected, never read with a guessed field (`check_header`). wfdb's
header parser skips a field it cannot read and takes its default instead (a sampling
frequency 'abc' becomes 250 Hz, an ADC gain 'abc' becomes 200 and shifts the channel name),
so every field the canonical signal depends on is parsed again from the header text as
header(5) defines it and must be what wfdb read: sampling frequency, sample count, signal
count (= the signal lines), format, samples per frame, skew, byte offset, ADC gain,
baseline, units, ADC zero, initial value, description; the other numeric fields must parse
too. A field that is absent takes header(5)'s default (250 Hz; ADC gain 200, also for a
gain of 0; baseline = ADC zero = 0; millivolts; no sample count: the file's length).

Then every signal file of a single-segment header (each segment of a multi-segment one) is
checked against the header (`check_signal_files`): its size must be exactly its signals x
the sample count in its format after the byte offset, so a truncated file (an interrupted
download; a read limited to the kept window never reaches the missing end) or a header that
declares other signals, samples, format or offset than the file holds is rejected. A WFDB
`.mat` file (CinC 2020/2021) must hold its 'val' matrix of the format's type and of shape
signals x samples at the byte offset. FLAC-compressed files (formats 508, 516, 524) are not
size-checked.
"""

from __future__ import annotations

import contextlib
import fractions
import math
import pathlib
import re
import struct
import threading
from collections.abc import Iterable

import numpy as np
import wfdb
from wfdb.io import _header as wfdb_header
from wfdb.io import _signal as wfdb_signal

from data_pipelines import signal as signal_lib
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


# Strict header checks: every field the canonical signal depends on is parsed here from the
# header text (header(5) of the WFDB Applications Guide) and compared with what wfdb read.
# header(5): a missing sampling frequency is 250 Hz (DEFFREQ); a missing or zero ADC gain
# means an uncalibrated signal, for which 200 adu per physical unit (DEFGAIN) may be assumed
# (wfdb assumes it); a missing baseline is the ADC zero, a missing ADC zero is 0, missing
# units are millivolts; a missing or zero sample count leaves the length to the signal file.
_DEFAULT_FS = 250.0
_DEFAULT_GAIN = 200.0
_UINT = re.compile(r"\d+")
_INT = re.compile(r"-?\d+")
# Any form scanf(3) reads as a floating-point number: '360', '360.', '360.0', '3.6e2'.
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_FS_FIELD = re.compile(r"(?P<fs>[^/]*)(?:/(?P<counter>[^(]*)(?:\((?P<base>[^)]*)\))?)?")
_FMT_FIELD = re.compile(
    r"(?P<fmt>[^x:+]*)(?:x(?P<spf>[^:+]*))?(?::(?P<skew>[^+]*))?(?:\+(?P<offset>.*))?")
_GAIN_FIELD = re.compile(r"(?P<gain>[^(/]*)(?:\((?P<baseline>[^)]*)\))?(?:/(?P<units>.*))?")
_UNITS = re.compile(r"[\w^?%/-]+")
# Format 0 is a null signal (no samples stored; the layout header of a multi-segment record).
_FORMATS = ("0", *wfdb_signal.DAT_FMTS)
# Bytes a sample takes (packed formats: exact fractions) and the size of their packed groups.
_SAMPLE_BYTES = {fmt: fractions.Fraction(n).limit_denominator(3)
                 for fmt, n in wfdb_signal.BYTES_PER_SAMPLE.items() if n}
_GROUP_BYTES = {"212": 3, "310": 4, "311": 4}
# WFDB .mat signal files (wfdb2mat, PhysioNet/CinC 2020-2021): one matrix 'val', signals x
# samples, stored column by column (frame after frame) as MAT v4 (offset 24) or MAT v5
# (offset 192). The matrix type of each WFDB format: v4 type code, v5 data type.
_MAT_V4_TYPE = {"16": 30, "32": 20, "80": 50}
_MAT_V5_TYPE = {"16": 3, "32": 5, "80": 2}
_MAT_TYPE_NAME = {"16": "int16", "32": "int32", "80": "uint8"}


def _header_lines(path: pathlib.Path) -> list[str]:
  """The non-empty, non-comment lines of a header, split as wfdb splits them.

  Bytes that are not ASCII (which wfdb drops) are kept, as U+FFFD where they are not UTF-8,
  so that a field wfdb reads differently from the file is noticed.
  """
  text = path.read_bytes().decode("utf-8-sig", errors="replace")
  lines = (line.strip() for line in text.splitlines())
  lines = [line for line in lines if line and not line.startswith("#")]
  if not lines:
    raise Rejected(f"header: {path.name} has no record line")
  return lines


def _parsed(pattern: re.Pattern, text: str, what: str, cast, field: str | None = None):
  if not pattern.fullmatch(text):
    inside = f" (in {field!r})" if field is not None and field != text else ""
    raise Rejected(f"header: {what} {text!r}{inside} does not parse")
  return cast(text)


def _parse_record_line(line: str) -> dict:
  """Segment count, signal count, sampling frequency and sample count of a record line."""
  tokens = line.split()
  name, slash, n_seg = tokens[0].partition("/")
  out: dict = {"name": name, "n_seg": None, "fs": _DEFAULT_FS, "fs_text": None,
               "sig_len": None, "sig_len_text": None}
  if slash:
    out["n_seg"] = _parsed(_UINT, n_seg, "segment count", int)
  if len(tokens) < 2:
    raise Rejected("header: the record line has no signal count")
  out["n_sig_text"] = tokens[1]
  out["n_sig"] = _parsed(_UINT, tokens[1], "signal count", int)
  if len(tokens) > 2:
    m = _FS_FIELD.fullmatch(tokens[2])
    if m is None:
      raise Rejected(f"header: sampling frequency {tokens[2]!r} does not parse")
    out["fs_text"] = m["fs"]
    out["fs"] = _parsed(_FLOAT, m["fs"], "sampling frequency", float, tokens[2])
    if not 0 < out["fs"] < math.inf:
      raise Rejected(f"header: sampling frequency {m['fs']!r} is not a positive rate")
    if m["counter"] is not None:
      _parsed(_FLOAT, m["counter"], "counter frequency", float, tokens[2])
    if m["base"] is not None:
      _parsed(_FLOAT, m["base"], "base counter value", float, tokens[2])
  if len(tokens) > 3:
    out["sig_len_text"] = tokens[3]
    out["sig_len"] = _parsed(_UINT, tokens[3], "sample count", int)
  return out


def _parse_signal_line(number: int, line: str) -> dict:
  """The fields of signal line `number` (1-based) that decide its samples, as (text, value).

  Fields are positional (header(5): each optional field may be present only if the fields
  before it are), so a field that does not parse is never skipped over.
  """
  tokens = line.split()
  what = f"signal {number}"
  if len(tokens) < 2:
    raise Rejected(f"header: {what} has no format")
  f = {"file name": (tokens[0], tokens[0])}
  m = _FMT_FIELD.fullmatch(tokens[1])
  if m is None:
    raise Rejected(f"header: {what} format {tokens[1]!r} does not parse")
  fmt = _parsed(_UINT, m["fmt"], f"{what} format", str, tokens[1])
  if fmt not in _FORMATS:
    raise Rejected(f"header: {what} format {fmt} is not a WFDB signal format wfdb reads")
  f["format"] = (m["fmt"], fmt)
  spf = 1 if m["spf"] is None else _parsed(_UINT, m["spf"], f"{what} samples per frame", int,
                                                tokens[1])
  if spf < 1:
    raise Rejected(f"header: {what} samples per frame {m['spf']!r} is not positive")
  f["samples per frame"] = (m["spf"], spf)
  f["skew"] = (m["skew"], None if m["skew"] is None
               else _parsed(_UINT, m["skew"], f"{what} skew", int, tokens[1]))
  f["byte offset"] = (m["offset"], None if m["offset"] is None
                      else _parsed(_UINT, m["offset"], f"{what} byte offset", int, tokens[1]))
  gain, baseline, units = None, None, None
  if len(tokens) > 2:
    g = _GAIN_FIELD.fullmatch(tokens[2])
    if g is None:
      raise Rejected(f"header: {what} ADC gain field {tokens[2]!r} does not parse")
    gain = (g["gain"], _parsed(_FLOAT, g["gain"], f"{what} ADC gain", float, tokens[2]))
    if g["baseline"] is not None:
      baseline = (g["baseline"],
                  _parsed(_INT, g["baseline"], f"{what} baseline", int, tokens[2]))
    if g["units"] is not None:
      units = (g["units"], _parsed(_UNITS, g["units"], f"{what} units", str, tokens[2]))
  numbers = {}
  for k, (name, pattern) in enumerate((("ADC resolution", _UINT), ("ADC zero", _INT),
                                       ("initial value", _INT), ("checksum", _INT),
                                       ("block size", _INT))):
    if len(tokens) > 3 + k:
      text = tokens[3 + k]
      numbers[name] = (text, _parsed(pattern, text, f"{what} {name}", int))
  zero = numbers.get("ADC zero")
  f["ADC gain"] = (gain[0], gain[1] or _DEFAULT_GAIN) if gain else (None, _DEFAULT_GAIN)
  f["baseline"] = baseline or (None, zero[1] if zero else 0)
  f["units"] = units or (None, "mV")
  f["ADC zero"] = zero or (None, None)
  f["initial value"] = numbers.get("initial value", (None, None))
  description = " ".join(tokens[8:]) or None
  f["description"] = (description, description)
  return f


def _same(mine, theirs) -> bool:
  if isinstance(mine, float) and theirs is not None:
    try:
      return math.isclose(mine, float(theirs), rel_tol=1e-12)
    except (TypeError, ValueError):
      return False
  if isinstance(mine, str) and isinstance(theirs, str):
    return " ".join(mine.split()) == " ".join(theirs.split())
  return mine == theirs


def _agree(what: str, text, mine, theirs) -> None:
  """Rejects a field wfdb read differently from the header (its parser skips what it cannot
  read and takes defaults instead)."""
  if not _same(mine, theirs):
    shown = "absent" if text is None else repr(text)
    theirs = theirs.item() if isinstance(theirs, np.generic) else theirs
    raise Rejected(f"header: {what} {shown} is read as {theirs!r} by wfdb, not {mine!r}")


def _field(values, i):
  return None if values is None else values[i]


def _check_record_fields(record: dict, header) -> None:
  _agree("signal count", record["n_sig_text"], record["n_sig"], header.n_sig)
  _agree("sampling frequency", record["fs_text"], record["fs"], header.fs)
  _agree("sample count", record["sig_len_text"], record["sig_len"], header.sig_len)


def check_header(path: pathlib.Path, header) -> None:
  """Rejects a record whose header does not parse strictly or disagrees with its files.

  Every field the canonical signal depends on (sampling frequency, sample count, signal
  count, format, samples per frame, skew, byte offset, ADC gain, baseline, units, ADC zero,
  initial value, description) must parse as header(5) defines it (a field that is absent
  takes header(5)'s default) and must be what wfdb read; then the signal files are checked
  against the header (`check_signal_files`). A multi-segment header is checked the same way,
  segment by segment.

  Args:
    path: the record path without extension.
    header: the record's header as `wfdb.rdheader` read it.

  Raises:
    Rejected: "header: <field> '<text>' does not parse", "header: <field> ... is read as
      ... by wfdb", or a signal file reason.
  """
  path = pathlib.Path(path)
  lines = _header_lines(path.parent / f"{path.name}.hea")
  record = _parse_record_line(lines[0])
  if record["n_seg"] is None:
    _check_single_segment(path, lines, record, header)
    return
  if not isinstance(header, wfdb.MultiRecord):
    raise Rejected("header: the record line declares segments, wfdb read no segments")
  _check_record_fields(record, header)
  if len(lines) - 1 != record["n_seg"]:
    raise Rejected(f"header: segment count {record['n_seg']} does not match the "
                   f"{len(lines) - 1} segment lines that follow")
  segments = []
  for k, line in enumerate(lines[1:]):
    tokens = line.split()
    if len(tokens) < 2:
      raise Rejected(f"header: segment {k + 1} has no segment length")
    length = _parsed(_UINT, tokens[1], f"segment {k + 1} length", int)
    _agree(f"segment {k + 1} name", tokens[0], tokens[0], header.seg_name[k])
    _agree(f"segment {k + 1} length", tokens[1], length, int(header.seg_len[k]))
    segments.append((tokens[0], length))
  total = sum(n for _, n in segments)
  if record["sig_len"] and total != record["sig_len"]:
    raise Rejected(f"header: sample count {record['sig_len']} is not the {total} samples of "
                   "its segments")
  variable = bool(segments) and segments[0][1] == 0
  for name, length in segments:
    if name == "~":
      continue
    seg_path = path.parent / name
    if not (path.parent / f"{name}.hea").is_file():
      continue  # wfdb names the missing segment itself
    try:
      seg_lines = _header_lines(path.parent / f"{name}.hea")
      seg_record = _parse_record_line(seg_lines[0])
      if seg_record["n_seg"] is not None:
        raise Rejected("header: a segment cannot be a multi-segment record")
      _check_single_segment(seg_path, seg_lines, seg_record, wfdb.rdheader(str(seg_path)))
    except Rejected as e:
      raise Rejected(f"segment {name}: {e}") from e
    if not math.isclose(seg_record["fs"], record["fs"], rel_tol=1e-12):
      raise Rejected(f"header: segment {name} sampling frequency {seg_record['fs']:g} is not "
                     f"the record's {record['fs']:g}")
    if seg_record["sig_len"] is not None and seg_record["sig_len"] != length:
      raise Rejected(f"header: segment {name} sample count {seg_record['sig_len']} is not the "
                     f"segment length {length} of the record")
    if not variable and seg_record["n_sig"] != record["n_sig"]:
      raise Rejected(f"header: segment {name} signal count {seg_record['n_sig']} is not the "
                     f"record's {record['n_sig']}")


def _check_single_segment(path: pathlib.Path, lines: list[str], record: dict, header) -> None:
  if not isinstance(header, wfdb.Record):
    raise Rejected("header: wfdb read segments from a header that declares none")
  if len(lines) - 1 != record["n_sig"]:
    raise Rejected(f"header: signal count {record['n_sig']} does not match the "
                   f"{len(lines) - 1} signal lines that follow")
  _check_record_fields(record, header)
  theirs = {"file name": header.file_name, "format": header.fmt,
            "samples per frame": header.samps_per_frame, "skew": header.skew,
            "byte offset": header.byte_offset, "ADC gain": header.adc_gain,
            "baseline": header.baseline, "units": header.units, "ADC zero": header.adc_zero,
            "initial value": header.init_value, "description": header.sig_name}
  for i, line in enumerate(lines[1:]):
    for field, (text, mine) in _parse_signal_line(i + 1, line).items():
      _agree(f"signal {i + 1} {field}", text, mine, _field(theirs[field], i))
  check_signal_files(header, path.parent)


def _declared(signals: int, per_frame: int, length, fmt: str, offset: int,
              total: int | None = None) -> str:
  """'12 signals x 1000 samples of format 16 [+ byte offset 24] [= 24024 bytes]'."""
  text = f"{signals} signal{'s' if signals != 1 else ''}"
  if per_frame != signals:
    text += f" ({per_frame} samples a frame)"
  if length is not None:
    text += f" x {length} {'samples' if per_frame == signals else 'frames'}"
  text += f" of format {fmt}"
  if offset:
    text += f" + byte offset {offset}"
  return text if total is None else f"{text} = {total} bytes"


def _byte_range(fmt: str, n_samples: int, extra: int = 0) -> tuple[int, int]:
  """(fewest, most) bytes of `n_samples` samples: packed formats may pad their last group,
  and a skewed signal may store up to `extra` more samples."""
  low = int(wfdb_signal._required_byte_num("read", fmt, n_samples))
  high = int(wfdb_signal._required_byte_num("read", fmt, n_samples + extra))
  group = _GROUP_BYTES.get(fmt, 1)
  return low, -(-high // group) * group


def _read_mat_header(path: pathlib.Path) -> dict:
  """Name, matrix type, shape and data offset of the first matrix of a MAT v4/v5 file."""
  with open(path, "rb") as f:
    head = f.read(1024)
  if len(head) >= 128 and head[126:128] in (b"IM", b"MI") and head[124:126] in (
      b"\x00\x01", b"\x01\x00", b"\x00\x02", b"\x02\x00"):
    if head[126:128] != b"IM" or head[124:126] != b"\x00\x01":
      raise Rejected(f"signal file {path.name} is a big-endian or MAT 7.3 file; WFDB .mat "
                     "signal files are little-endian MAT v4 or v5")
    return _read_mat_v5(path.name, head)
  if len(head) < 20:
    raise Rejected(f"signal file {path.name} holds {len(head)} bytes, no MAT header")
  kind, rows, cols, imag, name_len = struct.unpack("<5i", head[:20])
  if not (0 <= kind < 5000 and 0 < name_len <= 64 and rows >= 0 and cols >= 0
          and imag in (0, 1)):
    raise Rejected(f"signal file {path.name} is not a MAT v4 or v5 file")
  return {"version": 4, "name": head[20:20 + name_len].split(b"\0")[0].decode("latin-1"),
          "type": kind, "shape": (rows, cols), "complex": bool(imag),
          "offset": 20 + name_len, "nbytes": None}


def _read_mat_v5(file_name: str, head: bytes) -> dict:
  def tag(pos):
    kind, size = struct.unpack("<II", head[pos:pos + 8])
    if kind >> 16:  # small data element: size and type in one word, data in the next 4
      return kind & 0xFFFF, kind >> 16, pos + 4, pos + 8
    return kind, size, pos + 8, pos + 8 + -(-size // 8) * 8

  try:
    kind, _, pos, _ = tag(128)
    if kind == 15:
      raise Rejected(f"signal file {file_name} holds a compressed MAT element, which cannot be "
                     "read at a byte offset")
    if kind != 14:
      raise Rejected(f"signal file {file_name}: its first MAT element is not a matrix")
    _, _, data, pos = tag(pos)  # array flags
    flags = struct.unpack("<I", head[data:data + 4])[0]
    kind, size, data, pos = tag(pos)  # dimensions
    shape = struct.unpack(f"<{size // 4}i", head[data:data + size])
    _, size, data, pos = tag(pos)  # name
    name = head[data:data + size].decode("latin-1")
    kind, size, data, _ = tag(pos)  # real part
  except struct.error as e:
    raise Rejected(f"signal file {file_name}: MAT v5 header cut short") from e
  if flags & 0xFF not in range(6, 16):  # numeric classes (not cell, struct, char, sparse)
    raise Rejected(f"signal file {file_name} holds MAT variable {name!r} of class "
                   f"{flags & 0xFF}, not a numeric matrix")
  return {"version": 5, "name": name, "type": kind, "shape": tuple(shape),
          "complex": bool(flags & 0x800), "offset": data, "nbytes": size}


def _check_mat(path: pathlib.Path, fmt: str, offset: int, rows: int, sig_len) -> None:
  """Rejects a WFDB .mat signal file whose 'val' matrix is not what the header declares."""
  name = path.name
  if fmt not in _MAT_V4_TYPE:
    raise Rejected(f"header: format {fmt} of signal file {name} is not one a MAT file stores "
                   f"(16, 32 or 80)")
  mat = _read_mat_header(path)
  if mat["name"] != "val":
    raise Rejected(f"signal file {name} holds MAT variable {mat['name']!r}, not 'val'")
  want = (_MAT_V4_TYPE if mat["version"] == 4 else _MAT_V5_TYPE)[fmt]
  if mat["type"] != want or mat["complex"]:
    raise Rejected(f"signal file {name}: the 'val' matrix has MAT v{mat['version']} type "
                   f"{mat['type']}{' (complex)' if mat['complex'] else ''}, the header's "
                   f"format {fmt} needs {_MAT_TYPE_NAME[fmt]} (type {want})")
  size = path.stat().st_size
  bps = int(_SAMPLE_BYTES[fmt])
  if sig_len is None:  # wfdb takes the length from the file size
    sig_len = max(0, size - offset) // (bps * rows)
  if mat["shape"] != (rows, sig_len):
    shape = " x ".join(str(n) for n in mat["shape"])
    raise Rejected(f"signal file {name} holds a 'val' matrix of {shape}, the header declares "
                   f"{rows} signals x {sig_len} samples")
  if mat["offset"] != offset:
    raise Rejected(f"signal file {name}: the 'val' data starts at byte {mat['offset']}, the "
                   f"header declares byte offset {offset}")
  need = rows * sig_len * bps
  if mat["nbytes"] is not None and mat["nbytes"] != need:
    raise Rejected(f"signal file {name}: the 'val' matrix holds {mat['nbytes']} bytes of "
                   f"data, the header declares {_declared(rows, rows, sig_len, fmt, 0, need)}")
  if size < offset + need:
    raise Rejected(f"truncated signal file: signal file {name} holds {size} bytes, the "
                   f"header declares {_declared(rows, rows, sig_len, fmt, offset, offset + need)}")


def check_signal_files(header, directory: pathlib.Path) -> None:
  """Rejects a single-segment record whose signal files are not what its header declares.

  Each signal file must hold exactly its signals x the sample count in its format after
  its byte offset (a packed format may pad its last group; a skewed signal may store its
  skew); with no sample count in the header, a whole number of frames. Signals sharing a
  file must share its format and byte offset. A WFDB `.mat` file must hold the 'val'
  matrix (signals x samples) of the format's type at the byte offset. FLAC-compressed files
  (formats 508, 516, 524) say nothing about their length from their size and are not
  size-checked; missing files are left to wfdb, which names them.

  Args:
    header: the record's header (`wfdb.rdheader`); multi-segment headers are not checked
      here (`check_header` checks each segment).
    directory: the folder of the header (signal file names are relative to it).

  Raises:
    Rejected: "truncated signal file: signal file F holds N of the M samples the header
      declares (...)", "signal file F holds N bytes, the header declares ... = M bytes"...
  """
  if not isinstance(header, wfdb.Record) or not header.file_name:
    return
  n = len(header.file_name)
  spf = list(header.samps_per_frame or [1] * n)
  offsets = list(header.byte_offset or [None] * n)
  skews = list(header.skew or [None] * n)
  files: dict[str, dict] = {}
  for i, name in enumerate(header.file_name):
    entry = files.setdefault(name, {"fmt": header.fmt[i], "offset": offsets[i] or 0,
                                    "signals": 0, "per_frame": 0, "skew": 0, "first": i})
    if header.fmt[i] != entry["fmt"]:
      raise Rejected(f"header: signals {entry['first'] + 1} and {i + 1} share signal file "
                     f"{name} but declare formats {entry['fmt']} and {header.fmt[i]}")
    if (offsets[i] or 0) != entry["offset"]:
      raise Rejected(f"header: signals {entry['first'] + 1} and {i + 1} share signal file "
                     f"{name} but declare byte offsets {entry['offset']} and "
                     f"{offsets[i] or 0}")
    entry["signals"] += 1
    entry["per_frame"] += spf[i] or 1
    entry["skew"] = max(entry["skew"], skews[i] or 0)
  sig_len = int(header.sig_len) if header.sig_len else None  # 0: unspecified (header(5))
  frames_of = {}
  for name, e in files.items():
    fmt, offset, per_frame = e["fmt"], e["offset"], e["per_frame"]
    path = directory / name
    if name == "~" or fmt not in _SAMPLE_BYTES or not path.is_file():
      continue  # null signal; FLAC (compressed); missing file (wfdb names it)
    if name.lower().endswith(".mat"):
      _check_mat(path, fmt, offset, per_frame, sig_len)
      continue
    size = path.stat().st_size
    if sig_len is None:
      frames = int(max(0, size - offset) / _SAMPLE_BYTES[fmt]) // per_frame
      low, high = _byte_range(fmt, frames * per_frame)
      if not offset + low <= size <= offset + high:
        raise Rejected(f"signal file {name} holds {size} bytes, not a whole number of frames "
                       f"of {_declared(e['signals'], per_frame, None, fmt, offset)}")
      frames_of[name] = frames
      continue
    low, high = _byte_range(fmt, sig_len * per_frame, e["skew"] * per_frame)
    declared = _declared(e["signals"], per_frame, sig_len, fmt, offset, offset + low)
    if size < offset + low:
      held = int(max(0, size - offset) / _SAMPLE_BYTES[fmt]) // per_frame
      raise Rejected(f"truncated signal file: signal file {name} holds {held} of the "
                     f"{sig_len} samples the header declares ({size} bytes, the header "
                     f"declares {declared})")
    if size > offset + high:
      raise Rejected(f"signal file {name} holds {size} bytes, the header declares {declared}")
  if len(set(frames_of.values())) > 1:
    held = ", ".join(f"{name} {n}" for name, n in frames_of.items())
    raise Rejected(f"the header declares no sample count and its signal files hold different "
                   f"numbers of frames ({held})")


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
      check_header(pathlib.Path(path), header)
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
