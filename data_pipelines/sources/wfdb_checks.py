"""Strict checks of a WFDB record before it is read: never a signal read with a guessed field.

Malformed records are rejected, never read with a guessed field (`check_header`). wfdb's
header parser skips a field it cannot read and takes its default instead (a sampling
frequency 'abc' becomes 250 Hz, an ADC gain 'abc' becomes 200 and shifts the channel name),
so every field the canonical signal depends on is parsed again from the header text as
header(5) defines it and must be what wfdb read: sampling frequency, sample count, signal
count (= the signal lines), format, samples per frame, skew, byte offset, ADC gain,
baseline, units, ADC zero, initial value, description; the other numeric fields must parse
too. A field that is absent takes header(5)'s default (250 Hz; ADC gain 200, also for a
gain of 0; baseline = ADC zero = 0; millivolts; no sample count: the file's length).

Then the signal files are checked against the header (`wfdb_files.check_signal_files`).
"""

from __future__ import annotations

import math
import pathlib
import re

import numpy as np
import wfdb
from wfdb.io import _signal as wfdb_signal

from data_pipelines.sources import wfdb_files
from data_pipelines.sources.base import Rejected

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
  wfdb_files.check_signal_files(header, path.parent)
