r"""Converts an ECG dataset folder into sharded TFRecords for cgdmer_jax.

Usage:
  python -m data_pipelines.build --source=ptbxl --input=/data/ptbxl --output=/data/ptbxl_100 \
      --fs=100 [--seconds=10] [--shards=0] [--vocab_size=8000] [--tokenizer=PATH] \
      [--max_report_len=128] [--min_leads=12] [--workers=0] ...
  python -m data_pipelines.build ... --runner=beam [--beam_options="--runner=FlinkRunner ..."]

The output folder holds `cgdmer_ecg-<split>.tfrecord-NNNNN-of-NNNNN` shards, the TFDS
metadata (`tfds.builder_from_directory(output)` loads it), `manifest.csv` (one row per input
record: written or rejected with a reason), `tokenizer.model` (or `wordpiece.json` with
`--tokenizer=hf:DIR`) and `build_info.json`.
Rerunning the same command resumes an interrupted run and leaves a finished one unchanged.
--output may be an object-storage URL (gs://bucket/ptbxl_100): see data_pipelines/tfrecord.py
and docs/DATA.md.

Exit status: 0 converted (some records may be rejected: see the summary and manifest.csv),
or --help;
1 the conversion failed (a worker died, disk full...; rerun to resume); 2 bad usage (unknown
flag value, missing input folder, input not in the source's layout, output holds a different
build without --overwrite, --runner=beam without Apache Beam installed).
"""

from __future__ import annotations

import collections
import csv
import errno
import io
import os
import sys

from absl import flags
from absl import logging
from etils import epath

# TensorFlow (TFDS metadata, the shard writer) is a CPU tool here: never a GPU.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cgdmer_jax import cli
from data_pipelines import beam_runner
from data_pipelines import signal
from data_pipelines import sources
from data_pipelines import wordpiece
from data_pipelines import write

_SOURCE = flags.DEFINE_enum(
    "source", None, list(sources.NAMES),
    "Input layout: ptbxl (ptbxl_database.csv + records100/), cinc (CinC 2020/2021 .hea+.mat "
    "tree), cpsc_mat (original CPSC 2018 .mat files), ecg_arrhythmia (PhysioNet "
    "ecg-arrhythmia WFDBRecords/), wfdb_dir (any folder of WFDB records), mimic "
    "(MIMIC-IV-ECG record_list.csv + machine_measurements.csv + files/).")
_INPUT = flags.DEFINE_string("input", None, "Input folder (the dataset root).")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output folder (created if missing): a local path or an object-storage "
    "URL (gs://bucket/folder).")
_FS = flags.DEFINE_integer("fs", 500, "Target sampling rate in Hz (resample_poly).")
_SECONDS = flags.DEFINE_float(
    "seconds", 10.0, "Stored duration: the first SECONDS of a record, zero-padded if shorter.")
_MIN_LEADS = flags.DEFINE_integer(
    "min_leads", 12, "Records with fewer standard leads are rejected ('missing leads'); with "
    "a lower value missing leads are stored as zeros with lead_mask 0.")
_MAX_NAN = flags.DEFINE_float(
    "max_nan_fraction", 0.1, "Reject a record when more than this fraction of its kept "
    "samples are NaN/Inf; fewer are filled by linear interpolation (and counted).")
_SHARDS = flags.DEFINE_integer(
    "shards", 0, "Shards per split (capped at the split's record count). 0: automatic, "
    "~128 MiB per shard and at least min(16, records/256) shards.")
_VOCAB = flags.DEFINE_integer(
    "vocab_size", 8000, "SentencePiece vocabulary size (special ids included); clamped with "
    "a warning when the train reports cannot fill it.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "Reuse this SentencePiece model (a file or a gs:// URL) instead of "
    "training one (it must have pad=0 unk=1 bos=2 eos=3 <mask>=4); copied into the output. "
    "hf:DIR: the WordPiece tokenizer of a local Hugging Face checkpoint folder "
    "(tokenizer.json or vocab.txt) with its own special ids, stored as [CLS] pieces [SEP] "
    "[PAD]... (wordpiece.json in the output), for a report tower loaded from that folder.")
_MAX_REPORT_LEN = flags.DEFINE_integer(
    "max_report_len", 128, "Stored report length: [bos] + pieces + [eos], truncated keeping "
    "eos, padded with pad.")
_WORKERS = flags.DEFINE_integer(
    "workers", 0, "Conversion processes; 0: every core available to this process; 1: "
    "convert in this process.")
_SPLIT = flags.DEFINE_enum(
    "split", "auto", ["auto", "hash"], "auto: the source's split (PTB-XL strat_fold 1-8 "
    "train, 9 val, 10 test) where it has one, else by patient hash; hash: patient hash only.")
_VAL = flags.DEFINE_float("val_fraction", 0.1, "Patient-hash fraction of the val split.")
_TEST = flags.DEFINE_float("test_fraction", 0.1, "Patient-hash fraction of the test split.")
_PTBXL_HR = flags.DEFINE_bool(
    "ptbxl_hr", False, "PTB-XL: read the 500 Hz records500/ (filename_hr) instead of "
    "records100/.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace a different earlier build in --output (only this tool's "
    "files are deleted).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (local runner).")
_RUNNER = flags.DEFINE_enum(
    "runner", "local", ["local", "beam"], "Conversion engine. local: a process pool on this "
    "machine (--workers); beam: an Apache Beam pipeline, one element per shard (needs "
    "pip install -e '.[beam]'; every worker must see --input under the same local path and "
    "--output under the same path or URL). Everything else, resumption included, is the "
    "same.")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_options", "", "With --runner=beam: Beam pipeline flags, shell-quoted, e.g. "
    "\"--direct_running_mode=multi_processing --direct_num_workers=8\" or "
    "\"--runner=FlinkRunner --flink_master=host:8081 ...\"; empty: Beam's DirectRunner "
    "with its defaults. See docs/DATA.md.")


def config_from_flags() -> write.BuildConfig:
  """The `BuildConfig` of the parsed flags."""
  return write.BuildConfig(
      source=_SOURCE.value, input=_INPUT.value, output=_OUTPUT.value,
      signal=signal.Config(fs=_FS.value, seconds=_SECONDS.value, min_leads=_MIN_LEADS.value,
                           max_nan_fraction=_MAX_NAN.value),
      shards=_SHARDS.value, vocab_size=_VOCAB.value, tokenizer=_TOKENIZER.value,
      max_report_len=_MAX_REPORT_LEN.value, workers=_WORKERS.value, split_mode=_SPLIT.value,
      val_fraction=_VAL.value, test_fraction=_TEST.value, ptbxl_hr=_PTBXL_HR.value,
      overwrite=_OVERWRITE.value, progress=_PROGRESS.value, runner=_RUNNER.value,
      beam_options=_BEAM_OPTIONS.value)


def input_rates(output: str) -> collections.Counter:
  """{input sampling rate: records written} from the output's manifest.csv."""
  rates: collections.Counter = collections.Counter()
  text = (epath.Path(output) / "manifest.csv").read_text()
  for row in csv.DictReader(io.StringIO(text)):
    if row["status"] == "written" and row.get("fs_in"):
      rates[float(row["fs_in"])] += 1
  return rates


def _rates_report(config: write.BuildConfig) -> list[str]:
  """The input rates seen, and a warning for every rate below the target (upsampled)."""
  rates = input_rates(config.output)
  lines = ["input sampling rates: " + ", ".join(
      f"{r:g} Hz ({n} records)" for r, n in sorted(rates.items()))]
  up = {r: n for r, n in rates.items() if r < config.signal.fs}
  if up:
    hint = (" PTB-XL's 500 Hz records are read with --ptbxl_hr." if config.source == "ptbxl"
            and not config.ptbxl_hr else "")
    lines.append(f"warning: {sum(up.values())} records were upsampled to {config.signal.fs:g} Hz "
                 f"from {', '.join(f'{r:g}' for r in sorted(up))} Hz: the added samples hold no "
                 f"information the records did not have.{hint}")
  return lines


def main(argv) -> int:
  del argv
  if _FS.value <= 0:
    raise cli.UsageError(f"--fs must be a positive sampling rate in Hz, got {_FS.value}")
  if _SECONDS.value <= 0:
    raise cli.UsageError(f"--seconds must be positive, got {_SECONDS.value}")
  config = config_from_flags()
  if config.tokenizer and config.tokenizer.startswith(wordpiece.PREFIX):
    folder = config.tokenizer[len(wordpiece.PREFIX):]
    try:
      if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder")
      wordpiece.from_folder(folder)
    except (FileNotFoundError, ValueError) as e:
      return cli.fail(f"--tokenizer {config.tokenizer}: {e}", cli.USAGE)
  elif config.tokenizer and not epath.Path(config.tokenizer).is_file():
    return cli.fail(f"--tokenizer {config.tokenizer} is not a file", cli.USAGE)
  try:
    summary = write.build(config)
  except (sources.LayoutError, FileExistsError, ValueError,
          beam_runner.BeamNotInstalledError) as e:
    return cli.fail(str(e), cli.USAGE)
  except (RuntimeError, OSError) as e:
    # The message says what happened; the traceback only with -v=1.
    logging.debug("conversion failed", exc_info=True)
    hint = ("free space on the output disk, then " if getattr(e, "errno", None) ==
            errno.ENOSPC else "")
    return cli.fail(f"conversion failed: {e}; {hint}rerun the same command to resume: "
                    "completed shards are kept")
  print(summary.format())
  if summary.counts["written"] == 0:
    return cli.fail(f"nothing was written: {summary.counts['listed']} records listed under "
                    f"{config.input}, none converted (the reasons are above)")
  for line in _rates_report(config):
    print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
  return cli.OK


if __name__ == "__main__":
  flags.mark_flags_as_required(["source", "input", "output"])
  cli.run(main)
