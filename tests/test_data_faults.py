"""Damaged inputs and outputs of the converter: truncated WFDB files, a full disk, verify."""

import csv
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from cgdmer_jax.data import features
from data_pipelines import signal
from data_pipelines import sources
from data_pipelines import verify
from data_pipelines import write

REPO = pathlib.Path(__file__).resolve().parents[1]
RECORD = "records100/00000/00767_lr"  # embedded PTB-XL: 12 leads x 1000 samples, format 16


def _shards(out):
  return {p.name: p.read_bytes() for p in sorted(out.glob(f"{features.DATASET_NAME}-*"))}


def _manifest(out):
  with open(out / features.MANIFEST_FILE, newline="", encoding="utf-8") as f:
    return {r["record"]: r for r in csv.DictReader(f)}


def test_truncated_signal_file_is_rejected(embedded_data, tmp_path):
  folder = tmp_path / "wfdb"
  for name in ("whole", "cut"):
    for ext in (".hea", ".dat"):
      text = (embedded_data / "ptbxl" / f"{RECORD}{ext}").read_bytes()
      if ext == ".hea":
        text = text.replace(b"00767_lr", name.encode())
      (folder / f"{name}{ext}").parent.mkdir(parents=True, exist_ok=True)
      (folder / f"{name}{ext}").write_bytes(text)
  # A download cut after 200 of the 1000 frames (12 leads x 2 bytes a frame).
  with open(folder / "cut.dat", "r+b") as f:
    f.truncate(200 * 12 * 2 + 7)
  source = sources.get_source("wfdb_dir", str(folder))
  assert source.read("whole", max_seconds=10).signal.shape == (1000, 12)
  # Even a window inside what the file holds is refused: the record is not what it claims.
  for window in (1.0, 10.0, None):
    with pytest.raises(sources.Rejected,
                       match="signal file cut.dat holds 200 of the 1000 samples the header "
                             "declares"):
      source.read("cut", max_seconds=window)
  out = tmp_path / "out"
  write.build(write.BuildConfig(source="wfdb_dir", input=str(folder), output=str(out),
                                signal=signal.Config(fs=100), workers=1, progress=False))
  rows = _manifest(out)
  assert rows["whole"]["status"] == "written"
  assert rows["cut"]["status"] == "rejected"
  assert "holds 200 of the 1000 samples" in rows["cut"]["reason"]


_FULL_DISK = textwrap.dedent("""
    import runpy, sys
    import tensorflow as tf
    real = tf.io.TFRecordWriter
    written = [0]

    class FillsUp:
      # What TensorFlow's writer raises when the disk is full (measured on a 1 MiB tmpfs).
      def __init__(self, path):
        self._path, self._w = path, real(path)
      def write(self, record):
        written[0] += 1
        if written[0] > 100:  # inside the third of four train shards (48 records each)
          raise tf.errors.ResourceExhaustedError(
              None, None, self._path + "; No space left on device")
        self._w.write(record)
      def close(self):
        self._w.close()

    tf.io.TFRecordWriter = FillsUp
    sys.argv = ["build"] + sys.argv[1:]
    runpy.run_module("data_pipelines.build", run_name="__main__")
""")


def test_disk_full_during_conversion(embedded_data, ptbxl_tfrecords, tmp_path):
  out = tmp_path / "full"
  args = [f"--input={embedded_data / 'ptbxl'}", f"--output={out}", "--source=ptbxl",
          "--fs=100", "--shards=4", "--vocab_size=400", "--workers=1", "--noprogress"]
  run = subprocess.run([sys.executable, "-c", _FULL_DISK, *args], cwd=REPO,
                       capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 1, run.stderr
  assert "error: conversion failed: [Errno 28] No space left on device" in run.stderr
  assert "free space on the output disk, then rerun the same command" in run.stderr
  assert "Traceback" not in run.stderr, run.stderr
  assert not list(out.glob("*.tmp-*"))
  assert not (out / features.BUILD_INFO_FILE).exists()
  # The rerun (space freed) converts only what is missing and ends as a clean build.
  summary = write.build(write.BuildConfig(
      source="ptbxl", input=str(embedded_data / "ptbxl"), output=str(out),
      signal=signal.Config(fs=100, seconds=10.0), shards=4, vocab_size=400, workers=1,
      progress=False))
  assert summary.shards_skipped == 2
  assert _shards(out) == _shards(ptbxl_tfrecords)


def _flip(path, at):
  with open(path, "r+b") as f:
    f.seek(at)
    byte = f.read(1)
    f.seek(at)
    f.write(bytes([byte[0] ^ 0x01]))


def test_verify_names_one_flipped_byte(embedded_data, ptbxl_tfrecords, tmp_path):
  data = tmp_path / "copy"
  shutil.copytree(ptbxl_tfrecords, data)
  clean = verify.verify(data)
  assert clean.ok and clean.records == 240 and clean.shards == 12, clean.format()
  shard = data / "cgdmer_ecg-train.tfrecord-00002-of-00004"
  _flip(shard, 500_000)
  run = subprocess.run([sys.executable, "-m", "data_pipelines.verify", f"--data_dir={data}",
                        "--noprogress"], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 1, run.stdout + run.stderr
  lines = run.stdout.splitlines()
  assert "12 shards, 239 records" in lines[0] and "2 problems" in lines[0], run.stdout
  assert f"damaged record: {shard} at byte" in run.stdout
  assert f"{shard}: 47 readable records, the TFDS metadata says 48" in run.stdout
  assert "rerunning the same `python -m data_pipelines.build` command" in run.stderr
  # The rebuild the message describes: delete the shard, rerun the build.
  shard.unlink()
  summary = write.build(write.BuildConfig(
      source="ptbxl", input=str(embedded_data / "ptbxl"), output=str(data),
      signal=signal.Config(fs=100, seconds=10.0), shards=4, vocab_size=400, workers=1,
      progress=False))
  assert summary.converted_now == 48
  assert verify.verify(data).ok
  assert _shards(data) == _shards(ptbxl_tfrecords)
  # Counts are checked too: a manifest that lost a row no longer matches the shards.
  manifest = data / features.MANIFEST_FILE
  lines = manifest.read_text().splitlines(keepends=True)
  manifest.write_text("".join(ln for ln in lines if ln.split(",")[0] != _first_in(data, 2)))
  report = verify.verify(data)
  assert report.problems == [f"{shard}: manifest.csv lists 47 written records, the TFDS "
                             "metadata 48"], report.problems


def _first_in(data, shard):
  """The first record of train shard `shard`, from the manifest."""
  rows = _manifest(data).values()
  return next(r["record"] for r in rows if r["split"] == "train" and r["shard"] == str(shard))
