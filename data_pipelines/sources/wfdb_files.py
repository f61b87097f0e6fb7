"""Strict checks of a WFDB record's signal files against its header (sizes, `.mat` payloads).

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

import fractions
import pathlib
import struct

import wfdb
from wfdb.io import _signal as wfdb_signal

from data_pipelines.sources.base import Rejected

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
