"""Malformed WFDB records are rejected with a reason naming the field, never read wrongly.

Every case is a real embedded record copied into tmp_path and then damaged in one field:
PTB-XL `00767_lr` (format 16, `.dat`), CPSC 2018 `A0002` (CinC 2020 WFDB `.mat`, MAT v4
'val' at byte 24) and the multi-segment MIMIC record `041s`. Where wfdb alone would read the
damaged header without an error (taking a default for the field it cannot parse), the test
shows it, so each case is one the converter used to write as a wrong signal.
"""

import csv
import io
import pathlib
import shutil
import struct

import numpy as np
import pytest
import scipy.io
import wfdb

from cgdmer_jax.data import features
from data_pipelines import signal
from data_pipelines import sources
from data_pipelines import write

PTBXL = ("ptbxl/records100/00000", "00767_lr", ".dat")  # 12 x 1000 samples, format 16
CINC = ("cpsc2018/wfdb", "A0002", ".mat")  # 12 x 5000 samples, format 16+24 (MAT v4)
MULTISEG = "wfdb_samples/mimic2_multiseg_041s"


def _copy(embedded_data, tmp_path, record=PTBXL) -> pathlib.Path:
  """A writable copy of a real record (header and signal file) in its own folder."""
  folder, name, ext = record
  out = tmp_path / "copy"
  out.mkdir(parents=True, exist_ok=True)
  for suffix in (".hea", ext):
    shutil.copyfile(embedded_data / folder / f"{name}{suffix}", out / f"{name}{suffix}")
  return out


def _edit(path: pathlib.Path, old: str, new: str, count: int = 1) -> None:
  text = path.read_text(encoding="utf-8")
  assert text.count(old) >= count, (old, text)
  path.write_text(text.replace(old, new, count), encoding="utf-8")


def _rejected(folder: pathlib.Path, name: str, match: str, source: str = "wfdb_dir") -> str:
  with pytest.raises(sources.Rejected, match=match) as e:
    sources.get_source(source, folder).read(name, max_seconds=10)
  return str(e.value)


def _silently_read(folder: pathlib.Path, name: str) -> wfdb.Record:
  """wfdb on its own reads the damaged header without complaint."""
  return wfdb.rdheader(str(folder / name))


@pytest.mark.parametrize("record,source,original", [
    (PTBXL, "wfdb_dir", ("ptbxl", "ptbxl", "records100/00000/00767_lr")),
    (CINC, "cinc", ("cinc", "cpsc2018/wfdb", "A0002")),
])
def test_untouched_copies_read_as_the_originals(embedded_data, tmp_path, record, source,
                                                original):
  folder = _copy(embedded_data, tmp_path, record)
  copy = sources.get_source(source, folder).read_signal(record[1])
  name, root, rec = original
  ref = sources.get_source(name, embedded_data / root).read_signal(rec)
  np.testing.assert_array_equal(copy[0], ref[0])
  assert copy[1:3] == ref[1:3]
  sig, fields = wfdb.rdsamp(str(embedded_data / root / rec))
  np.testing.assert_array_equal(copy[0], sig)
  assert copy[2] == fields["fs"]


def test_sampling_frequency(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  hea = folder / "00767_lr.hea"
  _edit(hea, "00767_lr 12 100 1000", "00767_lr 12 abc 1000")
  assert _silently_read(folder, "00767_lr").fs == 250  # wfdb's default, not 100 Hz
  _rejected(folder, "00767_lr", r"^header: sampling frequency 'abc' does not parse$")
  _edit(hea, " abc ", " 1OO ")
  assert _silently_read(folder, "00767_lr").fs == 1  # wfdb stops at the letter O
  _rejected(folder, "00767_lr", r"^header: sampling frequency '1OO' does not parse$")
  # '1e2' is 100 Hz for header(5) (a scanf float) but 1 Hz for wfdb: refused, not misread.
  _edit(hea, " 1OO ", " 1e2 ")
  _rejected(folder, "00767_lr", r"^header: sampling frequency '1e2' is read as 1 by wfdb")
  _edit(hea, " 1e2 ", " 0 ")
  _rejected(folder, "00767_lr", r"^header: sampling frequency '0' is not a positive rate$")
  _edit(hea, " 0 ", " 100/abc ")
  _rejected(folder, "00767_lr", r"^header: counter frequency 'abc' \(in '100/abc'\) does not")


def test_sample_count(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  hea = folder / "00767_lr.hea"
  _edit(hea, " 12 100 1000", " 12 100 1O00")
  assert _silently_read(folder, "00767_lr").sig_len == 1  # wfdb stops at the letter O
  _rejected(folder, "00767_lr", r"^header: sample count '1O00' does not parse$")
  _edit(hea, " 1O00", " 999")
  _rejected(folder, "00767_lr", r"^signal file 00767_lr\.dat holds 24000 bytes, the header "
            r"declares 12 signals x 999 samples of format 16 = 23976 bytes$")
  _edit(hea, " 999", " 1001")
  _rejected(folder, "00767_lr", r"signal file 00767_lr\.dat holds 1000 of the 1001 samples "
            r"the header declares \(24000 bytes, the header declares 12 signals x 1001 samples")


def test_signal_count(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  hea = folder / "00767_lr.hea"
  _edit(hea, "00767_lr 12 100", "00767_lr 11 100")
  _rejected(folder, "00767_lr",
            r"^header: signal count 11 does not match the 12 signal lines that follow$")
  _edit(hea, "00767_lr 11 100", "00767_lr 12x 100")
  _rejected(folder, "00767_lr", r"^header: signal count '12x' does not parse$")
  # A header that lost a signal line and says 11: the file still holds 12 interleaved
  # signals, which an 11-signal read would scramble.
  lines = hea.read_text().splitlines(keepends=True)
  hea.write_text(lines[0].replace(" 12x ", " 11 ") + "".join(lines[1:-1]))
  _rejected(folder, "00767_lr", r"^signal file 00767_lr\.dat holds 24000 bytes, the header "
            r"declares 11 signals x 1000 samples of format 16 = 22000 bytes$")


def test_format(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  hea = folder / "00767_lr.hea"
  original = hea.read_text()
  _edit(hea, ".dat 16 ", ".dat 16x ")
  assert _silently_read(folder, "00767_lr").samps_per_frame[0] == 1  # wfdb's default
  _rejected(folder, "00767_lr",
            r"^header: signal 1 samples per frame '' \(in '16x'\) does not parse$")
  hea.write_text(original.replace(".dat 16 ", ".dat 17 "))
  _rejected(folder, "00767_lr", r"^header: signal 1 format 17 is not a WFDB signal format")
  hea.write_text(original.replace(".dat 16 ", ".dat 32 "))
  _rejected(folder, "00767_lr", r"signal file 00767_lr\.dat holds 500 of the 1000 samples .*"
            r"12 signals x 1000 samples of format 32 = 48000 bytes\)$")
  hea.write_text(original.replace(".dat 16 ", ".dat 212 ", 1))
  _rejected(folder, "00767_lr", r"^header: signals 1 and 2 share signal file 00767_lr\.dat "
            r"but declare formats 212 and 16$")


def test_adc_gain(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  hea = folder / "00767_lr.hea"
  _edit(hea, "1000.0(0)/mV", "1000.0x(0)/mV")
  silent = _silently_read(folder, "00767_lr")
  # wfdb keeps 1000 but takes 'x' for the units and the rest of the line for the name.
  assert silent.units[0] == "x" and silent.sig_name[0].startswith("(0)/mV")
  _rejected(folder, "00767_lr",
            r"^header: signal 1 ADC gain '1000\.0x' \(in '1000\.0x\(0\)/mV'\) does not parse$")
  _edit(hea, "1000.0x(0)/mV", "abc(0)/mV")
  assert _silently_read(folder, "00767_lr").adc_gain[0] == 200  # wfdb's default
  _rejected(folder, "00767_lr", r"^header: signal 1 ADC gain 'abc' \(in 'abc\(0\)/mV'\)")
  _edit(hea, "abc(0)/mV", "1E3(0)/mV")  # a float for header(5), 1 for wfdb
  _rejected(folder, "00767_lr", r"^header: signal 1 ADC gain '1E3' is read as 1\.0 by wfdb")
  _edit(hea, "1E3(0)/mV", "1000.0(0)/\u00b5V")  # wfdb drops non-ASCII bytes: 'V', x1000
  _rejected(folder, "00767_lr", "^header: signal 1 units '\u00b5V' is read as 'V' by wfdb")


def test_baseline(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  hea = folder / "00767_lr.hea"
  _edit(hea, "1000.0(0)/mV", "1000.0(1.5)/mV")
  assert _silently_read(folder, "00767_lr").baseline[0] == 1  # '.5)/mV ...' becomes the name
  _rejected(folder, "00767_lr",
            r"^header: signal 1 baseline '1\.5' \(in '1000\.0\(1\.5\)/mV'\) does not parse$")
  _edit(hea, "1000.0(1.5)/mV", "1000.0(abc)/mV")
  _rejected(folder, "00767_lr", r"^header: signal 1 baseline 'abc' ")
  _edit(hea, "1000.0(abc)/mV 16 0", "1000.0/mV 16 x")  # absent: the ADC zero, which must parse
  _rejected(folder, "00767_lr", r"^header: signal 1 ADC zero 'x' does not parse$")


def test_byte_offset(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  hea = folder / "00767_lr.hea"
  original = hea.read_text()
  hea.write_text(original.replace(".dat 16 ", ".dat 16+x "))
  _rejected(folder, "00767_lr", r"^header: signal 1 byte offset 'x' \(in '16\+x'\) does not")
  hea.write_text(original.replace(".dat 16 ", ".dat 16+4 "))  # every signal: no conflict
  _rejected(folder, "00767_lr", r"\(24000 bytes, the header declares 12 signals x 1000 "
            r"samples of format 16 \+ byte offset 4 = 24004 bytes\)$")
  hea.write_text(original.replace(".dat 16 ", ".dat 16+2 ", 1))
  _rejected(folder, "00767_lr", r"^header: signals 1 and 2 share signal file 00767_lr\.dat "
            r"but declare byte offsets 2 and 0$")
  mat = _copy(embedded_data, tmp_path / "mat", CINC)
  _edit(mat / "A0002.hea", "16+24", "16+20", count=12)
  _rejected(mat, "A0002", r"^signal file A0002\.mat: the 'val' data starts at byte 24, the "
            r"header declares byte offset 20$", source="cinc")


def test_payload_size(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  dat = folder / "00767_lr.dat"
  data = dat.read_bytes()
  dat.write_bytes(data[:-2])
  _rejected(folder, "00767_lr", r"signal file 00767_lr\.dat holds 999 of the 1000 samples the "
            r"header declares \(23998 bytes, the header declares 12 signals x 1000 samples of "
            r"format 16 = 24000 bytes\)$")
  dat.write_bytes(data + b"\0\0")
  _rejected(folder, "00767_lr", r"^signal file 00767_lr\.dat holds 24002 bytes, the header "
            r"declares 12 signals x 1000 samples of format 16 = 24000 bytes$")


def test_mat_payload(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path, CINC)
  path = folder / "A0002.mat"
  data = path.read_bytes()
  assert struct.unpack("<5i", data[:20]) == (30, 12, 5000, 0, 4) and data[20:24] == b"val\0"

  def rejected(payload, match):
    path.write_bytes(payload)
    return _rejected(folder, "A0002", match, source="cinc")

  rejected(data[:20] + b"ECG\0" + data[24:],
           r"^signal file A0002\.mat holds MAT variable 'ECG', not 'val'$")
  rejected(struct.pack("<i", 20) + data[4:],  # int32 matrix
           r"^signal file A0002\.mat: the 'val' matrix has MAT v4 type 20, the header's format "
           r"16 needs int16 \(type 30\)$")
  rejected(data[:4] + struct.pack("<i", 11) + data[8:],
           r"^signal file A0002\.mat holds a 'val' matrix of 11 x 5000, the header declares 12 "
           r"signals x 5000 samples$")
  rejected(data[:8] + struct.pack("<i", 4999) + data[12:],
           r"holds a 'val' matrix of 12 x 4999, the header declares 12 signals x 5000 samples$")
  rejected(data[:-2], r"^truncated signal file: signal file A0002\.mat holds 120022 bytes, the "
           r"header declares 12 signals x 5000 samples of format 16 \+ byte offset 24 = "
           r"120024 bytes$")
  # The same matrix as MAT v5 (as wfdb2mat writes it now) is read when the header gives its
  # offset, and refused at the v4 offset or compressed.
  val = scipy.io.loadmat(embedded_data / "cpsc2018/wfdb/A0002.mat")["val"]
  v5 = io.BytesIO()
  scipy.io.savemat(v5, {"val": val}, format="5")
  rejected(v5.getvalue(), r"^signal file A0002\.mat: the 'val' data starts at byte 184, the "
           r"header declares byte offset 24$")
  _edit(folder / "A0002.hea", "16+24", "16+184", count=12)
  ref = sources.get_source("cinc", embedded_data / "cpsc2018/wfdb").read_signal("A0002")
  np.testing.assert_array_equal(sources.get_source("cinc", folder).read_signal("A0002")[0],
                                ref[0])
  packed = io.BytesIO()
  scipy.io.savemat(packed, {"val": val}, format="5", do_compression=True)
  rejected(packed.getvalue(), r"^signal file A0002\.mat holds a compressed MAT element")
  double = io.BytesIO()
  scipy.io.savemat(double, {"val": val.astype(np.float64)}, format="5")
  rejected(double.getvalue(), r"the 'val' matrix has MAT v5 type 9, the header's format 16")


def test_multi_segment(embedded_data, tmp_path):
  src = embedded_data / MULTISEG
  folder = tmp_path / "multiseg"
  shutil.copytree(src, folder, copy_function=shutil.copyfile)
  ref = sources.get_source("wfdb_dir", src).read_signal("041s", max_seconds=10)
  copy = sources.get_source("wfdb_dir", folder).read_signal("041s", max_seconds=10)
  np.testing.assert_array_equal(copy[0], ref[0])
  _edit(folder / "041s.hea", "041s01 1000", "041s01 999")
  _rejected(folder, "041s", r"^header: sample count 2000 is not the 1999 samples of its "
            r"segments$")
  _edit(folder / "041s.hea", "041s01 999", "041s01 1000")
  _edit(folder / "041s01.hea", "041s01 7 125 1000", "041s01 7 250 1000")
  _rejected(folder, "041s", r"^header: segment 041s01 sampling frequency 250 is not the "
            r"record's 125$")
  _edit(folder / "041s01.hea", "041s01 7 250 1000", "041s01 7 125 1000")
  _edit(folder / "041s02.hea", "212x4 2000 12", "212x4 2OOO 12")
  _rejected(folder, "041s", r"^segment 041s02: header: signal 1 ADC gain '2OOO' does not parse$")


def test_converter_writes_only_the_untouched_copy(embedded_data, tmp_path):
  folder = _copy(embedded_data, tmp_path)
  original = (folder / "00767_lr.hea").read_text()
  broken = {"fs": ("12 100 1000", "12 abc 1000"), "gain": ("1000.0(0)/mV", "abc(0)/mV")}
  for name, (old, new) in broken.items():
    (folder / f"{name}.hea").write_text(original.replace(old, new, 1))
  out = tmp_path / "out"
  write.build(write.BuildConfig(source="wfdb_dir", input=str(folder), output=str(out),
                                signal=signal.Config(fs=100), workers=1, progress=False))
  with open(out / features.MANIFEST_FILE, newline="", encoding="utf-8") as f:
    rows = {r["record"]: (r["status"], r["reason"]) for r in csv.DictReader(f)}
  assert rows == {
      "00767_lr": ("written", ""),
      "fs": ("rejected", "header: sampling frequency 'abc' does not parse"),
      "gain": ("rejected", "header: signal 1 ADC gain 'abc' (in 'abc(0)/mV') does not parse"),
  }
