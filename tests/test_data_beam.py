"""The optional Beam runner: same bytes as the local runner, same resumption, clear when absent."""

import csv
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

from data_pipelines import shard_worker
from data_pipelines import signal
from data_pipelines import write

REPO = pathlib.Path(__file__).resolve().parents[1]


def _build(root, out, **kw):
  return write.build(write.BuildConfig(
      source="ptbxl", input=str(root), output=str(out), signal=signal.Config(fs=100),
      shards=4, vocab_size=300, progress=False, **kw))


def _digests(out):
  return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(out.rglob("*")) if p.is_file()}


def test_beam_runner_writes_the_local_bytes_and_resumes(embedded_data, tmp_path):
  pytest.importorskip("apache_beam", reason="the optional [beam] extra is not installed "
                      "(pip install -e '.[beam]')")
  root = embedded_data / "ptbxl"
  local = tmp_path / "local"
  _build(root, local, workers=1)
  expected = _digests(local)
  assert any(".tfrecord-" in name for name in expected) and "manifest.csv" in expected
  # The default: the DirectRunner (it tries Prism first and falls back where it cannot).
  beam = tmp_path / "beam"
  summary = _build(root, beam, runner="beam")
  assert summary.converted_now == 240 and summary.shards_skipped == 0
  assert _digests(beam) == expected
  # Resumption is the build's, not the runner's: drop one shard, and the manifest part only
  # of another (what a crash between a shard's rename and its part's leaves), then rerun on
  # several threads.
  parts = beam / shard_worker.BUILD_DIR / shard_worker.PARTS_DIR
  (beam / "cgdmer_ecg-train.tfrecord-00001-of-00004").unlink()
  (parts / "train-00001-of-00004.csv").unlink()
  (parts / "val-00003-of-00004.csv").unlink()
  with open(local / "manifest.csv", newline="", encoding="utf-8") as f:
    redo = sum((r["split"], r["shard"]) in {("train", "1"), ("val", "3")}
               for r in csv.DictReader(f))
  summary = _build(root, beam, runner="beam", beam_options=(
      "--direct_running_mode=multi_threading --direct_num_workers=3"))
  assert summary.shards_skipped == 10 and summary.converted_now == redo > 0
  assert _digests(beam) == expected


def test_beam_runner_without_beam_is_a_usage_error(embedded_data, tmp_path):
  # A package that fails to import stands for the missing extra, whether or not Beam is
  # installed in this environment.
  fake = tmp_path / "fake"
  (fake / "apache_beam").mkdir(parents=True)
  (fake / "apache_beam" / "__init__.py").write_text(
      "raise ModuleNotFoundError(\"No module named 'apache_beam'\")\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(fake)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  out = tmp_path / "out"
  run = subprocess.run(
      [sys.executable, "-m", "data_pipelines.build", "--source=ptbxl",
       f"--input={embedded_data / 'ptbxl'}", f"--output={out}", "--fs=100", "--runner=beam",
       "--noprogress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert run.returncode == 2, run.stderr
  assert "pip install -e '.[beam]'" in run.stderr
  assert not out.exists()  # refused before listing, training a tokenizer or touching output
