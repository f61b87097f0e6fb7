"""The converter's output: nothing lost, TFDS-readable, resumable, idempotent, safe to kill."""

import csv
import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cgdmer_jax.data import features
from cgdmer_jax.data import reader
from data_pipelines import shard_worker
from data_pipelines import signal
from data_pipelines import tfrecord
from data_pipelines import tokenizer
from data_pipelines import write

REPO = pathlib.Path(__file__).resolve().parents[1]

# (source, folder) pairs that together cover every record of a data root.
LAYOUTS = [("ptbxl", "ptbxl"), ("cinc", "cpsc2018/wfdb"), ("cpsc_mat", "cpsc2018/original_mat"),
           ("cinc", "csn"), ("cinc", "cinc_other"), ("wfdb_dir", "wfdb_samples")]


def _build(root, out, source="ptbxl", **kw):
  kw.setdefault("signal", signal.Config(fs=100))
  kw.setdefault("workers", 1)
  return write.build(write.BuildConfig(source=source, input=str(root), output=str(out),
                                       vocab_size=kw.pop("vocab_size", 300), progress=False,
                                       **kw))


def _manifest(out):
  with open(out / features.MANIFEST_FILE, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _independent_record_count(root: pathlib.Path) -> int:
  """Records by a plain walk: .hea files minus multi-segment parts, plus header-less .mat."""
  headers = sorted(root.rglob("*.hea"))
  parts = set()
  for hea in headers:
    lines = [ln for ln in hea.read_text(errors="ignore").splitlines()
             if ln.strip() and not ln.startswith("#")]
    name = lines[0].split()[0]
    if "/" in name:
      n = int(name.split("/")[1])
      parts |= {hea.parent / f"{ln.split()[0]}.hea" for ln in lines[1:1 + n]}
  bare_mat = [m for m in root.rglob("*.mat") if not m.with_suffix(".hea").exists()]
  return len([h for h in headers if h not in parts]) + len(bare_mat)


def _examples_in_shards(out) -> int:
  files = sorted(str(p) for p in out.glob(f"{features.DATASET_NAME}-*.tfrecord-*"))
  return sum(1 for _ in tf.data.TFRecordDataset(files)) if files else 0


def _account_for_everything(root, tmp_path, ptbxl_workers):
  rows = []
  for source, folder in LAYOUTS:
    out = tmp_path / folder.replace("/", "_")
    _build(root / folder, out, source,
           workers=ptbxl_workers if source == "ptbxl" else 1)
    part = _manifest(out)
    assert all(r["status"] in ("written", "rejected") for r in part)
    assert all(bool(r["reason"]) == (r["status"] == "rejected") for r in part)
    written = sum(r["status"] == "written" for r in part)
    assert written == _examples_in_shards(out), folder
    splits = tfds.builder_from_directory(str(out)).info.splits
    assert written == sum(s.num_examples for s in splits.values())
    rows += [dict(r, folder=folder) for r in part]
  expected = sum(_independent_record_count(root / f)
                 for f in ("ptbxl", "cpsc2018", "csn", "cinc_other", "wfdb_samples"))
  assert len(rows) == expected
  edge = [r for r in rows if "edge_cases" in r["record"]]
  assert len(edge) == 4
  assert all(r["status"] == "rejected" and "HeaderSyntaxError" in r["reason"] for r in edge)
  return rows


def test_every_embedded_record_written_or_rejected(embedded_data, tmp_path):
  # PTB-XL through a process pool (spawned: this process has TensorFlow loaded).
  rows = _account_for_everything(embedded_data, tmp_path, ptbxl_workers=2)
  assert sum(r["status"] == "written" for r in rows) >= 240 + 7 + 2 + 11 + 2


@pytest.mark.slow
def test_every_shared_record_written_or_rejected(shared_data, tmp_path):
  # PTB-XL through the process pool (2 workers), the others in-process.
  rows = _account_for_everything(shared_data, tmp_path, ptbxl_workers=2)
  ptbxl = [r for r in rows if r["folder"] == "ptbxl"]
  assert len(ptbxl) == 3230 and all(r["status"] == "written" for r in ptbxl)


def test_atomic_shard_writer_round_trip_and_checksums(tmp_path):
  path = tmp_path / "x.tfrecord"
  records = [os.urandom(n) for n in (0, 3, 1000, 5000, 70000)]
  with tfrecord.AtomicShardWriter(path) as w:
    for r in records:
      w.write(r)
    assert not path.exists()  # nothing under the final name until commit
    w.commit()
  assert not list(tmp_path.glob("*.tmp-*"))
  assert [x.numpy() for x in tf.data.TFRecordDataset(str(path))] == records
  data = bytearray(path.read_bytes())
  data[-100] ^= 1
  path.write_bytes(bytes(data))
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(str(path)))


@pytest.fixture(scope="module")
def ptbxl_out(embedded_data, tmp_path_factory):
  out = tmp_path_factory.mktemp("write") / "ptbxl"
  _build(embedded_data / "ptbxl", out, shards=4)
  return out


def test_tfds_reads_the_output(ptbxl_out):
  builder = tfds.builder_from_directory(str(ptbxl_out))
  assert builder.info.name == features.DATASET_NAME
  ds = builder.as_dataset(split="train")
  examples = list(tfds.as_numpy(ds))
  assert len(examples) == 192 == builder.info.splits["train"].num_examples
  ex = examples[0]
  assert ex["ecg"].shape == (12, 1000) and ex["ecg"].dtype == "int16"
  assert ex["fs"] == 100 and ex["source"] == b"ptbxl" and ex["report_len"] > 2
  assert [p.name for p in builder.info.splits["train"].filepaths] == [
      f"cgdmer_ecg-train.tfrecord-0000{i}-of-00004" for i in range(4)]


def test_build_info(ptbxl_out):
  info = reader.load_info(ptbxl_out).build_info
  assert info["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4}
  assert (info["fs"], info["num_samples"], info["min_leads"]) == (100, 1000, 12)
  assert info["counts"]["written"] == 240 and info["source"] == "ptbxl"
  assert info["tokenizer"] == features.TOKENIZER_FILE
  assert (ptbxl_out / features.TOKENIZER_FILE).is_file()


def test_splits_are_patient_disjoint(ptbxl_out, embedded_data, tmp_path):
  for out in (ptbxl_out, None):
    if out is None:  # the hash rule on the same records
      out = tmp_path / "hash"
      _build(embedded_data / "ptbxl", out, split_mode="hash", val_fraction=0.3,
             test_fraction=0.3)
    rows = _manifest(out)
    by_patient = {}
    for r in rows:
      by_patient.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert sum(1 for r in rows if sum(x["patient"] == r["patient"] for x in rows) > 1) >= 10
  folds = {r["record"]: r["split"] for r in _manifest(ptbxl_out)}
  assert sum(s == "test" for s in folds.values()) == 24  # strat_fold 10


def test_tokenizer_flag_reuses_a_model(ptbxl_out, embedded_data, tmp_path, monkeypatch):
  monkeypatch.setattr(tokenizer, "train", lambda *a, **k: pytest.fail("trained a tokenizer"))
  model = ptbxl_out / features.TOKENIZER_FILE
  out = tmp_path / "reuse"
  _build(embedded_data / "ptbxl", out, shards=4, tokenizer=str(model))
  assert (out / features.TOKENIZER_FILE).read_bytes() == model.read_bytes()
  assert _digests(out)["cgdmer_ecg-val.tfrecord-00000-of-00004"] == _digests(ptbxl_out)[
      "cgdmer_ecg-val.tfrecord-00000-of-00004"]


def _digests(out):
  return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(out.rglob("*")) if p.is_file()}


def test_rerun_is_idempotent(ptbxl_out, embedded_data, tmp_path):
  before = _digests(ptbxl_out)
  summary = _build(embedded_data / "ptbxl", ptbxl_out, shards=4)
  assert summary.converted_now == 0 and summary.shards_skipped == 12
  assert _digests(ptbxl_out) == before
  fresh = tmp_path / "fresh"
  _build(embedded_data / "ptbxl", fresh, shards=4)
  assert _digests(fresh) == before


class _Killed(BaseException):
  """Stands for the process dying mid-shard (not an Exception: no record can catch it)."""


def test_interrupted_run_leaves_no_complete_looking_shard(ptbxl_out, embedded_data,
                                                          tmp_path, monkeypatch):
  out = tmp_path / "killed"
  real = shard_worker.convert_record
  calls = []

  def dies_at_100(state, ref):
    calls.append(ref.record)
    if len(calls) == 100:  # inside the third train shard (48 records each)
      raise _Killed()
    return real(state, ref)

  monkeypatch.setattr(shard_worker, "convert_record", dies_at_100)
  with pytest.raises(_Killed):
    _build(embedded_data / "ptbxl", out, shards=4)
  monkeypatch.undo()
  names = sorted(p.name for p in out.iterdir())
  assert "cgdmer_ecg-train.tfrecord-00001-of-00004" in names
  assert "cgdmer_ecg-train.tfrecord-00002-of-00004" not in names
  assert not any(".tmp-" in n for n in names)
  for meta in ("dataset_info.json", "features.json", features.BUILD_INFO_FILE,
               features.MANIFEST_FILE):
    assert meta not in names
  with pytest.raises(FileNotFoundError):
    reader.load_info(out)
  with pytest.raises(Exception):
    tfds.builder_from_directory(str(out))
  # What a SIGKILL leaves: a half-written temporary shard and manifest part.
  (out / "cgdmer_ecg-train.tfrecord-00002-of-00004.tmp-4242").write_bytes(b"\x00" * 77)
  (out / "_build" / "manifest" / "train-00002-of-00004.csv.tmp-4242").write_text("record\n")
  summary = _build(embedded_data / "ptbxl", out, shards=4)
  assert summary.shards_skipped == 2
  assert not list(out.rglob("*.tmp-*"))
  assert _digests(out) == _digests(ptbxl_out)


class _DiesWhenUnpickled:
  """Unpickling this in a worker process ends the process at once, like a SIGKILL."""

  def __reduce__(self):
    return (os._exit, (3,))


@pytest.mark.slow
def test_killed_worker_process(ptbxl_out, embedded_data, tmp_path, monkeypatch):
  out = tmp_path / "worker_killed"
  real_plan = write.plan

  def poisoned_plan(config, refs):
    tasks = real_plan(config, refs)
    victim = tasks[2]
    victim.refs = [dataclasses.replace(victim.refs[0], meta={"die": _DiesWhenUnpickled()})
                   ] + victim.refs[1:]
    return tasks

  monkeypatch.setattr(write, "plan", poisoned_plan)
  with pytest.raises(RuntimeError, match="worker died"):
    _build(embedded_data / "ptbxl", out, shards=4, workers=2)
  monkeypatch.undo()
  assert not (out / "cgdmer_ecg-train.tfrecord-00002-of-00004").exists()
  assert not (out / features.BUILD_INFO_FILE).exists()
  assert not (out / "dataset_info.json").exists()
  _build(embedded_data / "ptbxl", out, shards=4, workers=2)
  assert _digests(out) == _digests(ptbxl_out)


def test_different_build_refused_unless_overwrite(embedded_data, tmp_path):
  root = embedded_data / "cpsc2018" / "wfdb"
  out = tmp_path / "cpsc"
  _build(root, out, "cinc")
  with pytest.raises(FileExistsError, match="different build.*signal"):
    _build(root, out, "cinc", signal=signal.Config(fs=50))
  _build(root, out, "cinc", signal=signal.Config(fs=50), overwrite=True)
  assert reader.load_info(out).fs == 50
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not a build of this tool"):
    _build(root, foreign, "cinc")
  _build(root, foreign, "cinc", overwrite=True)
  assert (foreign / "notes.txt").read_text() == "mine"
  # A run that died before writing its plan left only our side folder: simply start over.
  died = tmp_path / "died"
  (died / shard_worker.BUILD_DIR / "manifest").mkdir(parents=True)
  _build(root, died, "cinc")
  assert reader.load_info(died).split_sizes


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "data_pipelines.build", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_cli(embedded_data, tmp_path):
  helptext = _cli("--help")
  assert helptext.returncode == 0
  for flag in ("source", "input", "output", "fs", "seconds", "shards", "vocab_size",
               "tokenizer", "max_report_len", "min_leads", "workers", "max_nan_fraction",
               "split", "val_fraction", "test_fraction", "ptbxl_hr", "overwrite", "progress"):
    assert f"--{flag}" in helptext.stdout or f"--[no]{flag}" in helptext.stdout, flag
  bad = _cli("--source=mimic", f"--input={embedded_data / 'ptbxl'}", f"--output={tmp_path}/x")
  assert bad.returncode == 2 and "not a MIMIC-IV-ECG folder" in bad.stderr
  # Two workers: the CLI forks them (no TensorFlow loaded before the conversion).
  ok = _cli("--source=cinc", f"--input={embedded_data / 'csn'}", f"--output={tmp_path}/ok",
            "--fs=100", "--workers=2", "--noprogress")
  assert ok.returncode == 0, ok.stderr
  assert "records: 14 listed, 14 written, 0 rejected" in ok.stdout
  sizes = reader.load_info(tmp_path / "ok").split_sizes
  assert sum(sizes.values()) == 14 and len(sizes) >= 2  # >= 2 shard tasks: the pool ran
