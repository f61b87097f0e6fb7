r"""Converter and reader throughput on a PTB-XL folder, next to a plain wfdb loop.

Usage:
  python -m data_pipelines.throughput --input=../shared/data/ptbxl [--workers=N] [--fs=100]
  python -m data_pipelines.throughput --data_dir=DATA/ptbxl100 --batch=256 \
      --resume_steps=0,10000,100000          # resumption only, on a converted dataset

Prints (one machine, one run):
* plain loop: `wfdb.rdsamp` + `np.save` over every record of ptbxl_database.csv, in a fresh
  Python process (wfdb as installed, nothing of this project imported), records/s on 1 core;
* the same loop with this project's header-parsing shim (`wfdb_io.fast_header_parsing`),
  to show how much of the difference is wfdb's header parsing;
* the converter (`data_pipelines.write.build`) with 1 worker and with N workers, for the
  whole run (listing, tokenizer training, process start-up, metadata) and for the conversion
  stage alone (read, canonicalise, tokenize, serialise, write), and for that stage's steady
  state (records / the workers' summed time on shards x workers: each worker's one-time
  start-up, mostly importing TensorFlow, excluded; what a MIMIC-scale run sees): records/s,
  per core, and the per-core ratio to the plain loop;
* the reader: `train_batches` examples/s (batch 32) and, for each of --resume_steps, the
  seconds from `train_batches(start_step=k)` to its first batch: what a resumed run waits for
  its input (flat in k: data/stream.py reads at most one group of shards before the step).

A first line says how many of the N cores a CPU-bound job really gets at that moment (on a
shared machine the N-worker numbers are only comparable when it is close to N).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time

from absl import flags

from cgdmer_jax import cli
from data_pipelines import signal
from data_pipelines import write

# The reader (TensorFlow) is imported inside the functions that read: this process forks (the
# CPU check's pool, the converter's workers), which is unsafe once TensorFlow is loaded
# (`write._start_method`).

_INPUT = flags.DEFINE_string("input", None, "A PTB-XL folder (ptbxl_database.csv).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "A converted dataset: time only the reader's "
                                "resumption (--resume_steps) on it.")
_RESUME_STEPS = flags.DEFINE_list("resume_steps", ["0", "10000", "100000"],
                                  "Steps at which the reader's resumption is timed.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Converter processes; 0: all cores.")
_FS = flags.DEFINE_integer("fs", 100, "Target rate of the converter (Hz).")
_BATCH = flags.DEFINE_integer("batch", 32, "Reader batch size.")
_READ_BATCHES = flags.DEFINE_integer("read_batches", 300, "Reader batches timed.")

_PLAIN_LOOP = textwrap.dedent("""
    import os, sys, time
    import numpy as np, pandas as pd, wfdb
    root, out, shim = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    records = pd.read_csv(os.path.join(root, "ptbxl_database.csv")).filename_lr.tolist()
    ctx = None
    if shim:
      from data_pipelines.sources import wfdb_io
      ctx = wfdb_io.fast_header_parsing()
      ctx.__enter__()
    start = time.perf_counter()
    for i, rec in enumerate(records):
      sig, _ = wfdb.rdsamp(os.path.join(root, rec))
      np.save(os.path.join(out, f"{i}.npy"), sig)
    print(len(records), time.perf_counter() - start)
""")


def _spin(_) -> float:
  start = time.perf_counter()
  total = 0
  for i in range(5_000_000):
    total += i
  return time.perf_counter() - start


def effective_cores(n: int) -> float:
  """How many of n processes really run at once (n for an idle machine, less when shared)."""
  one = _spin(0)
  with multiprocessing.get_context("fork").Pool(n) as pool:
    start = time.perf_counter()
    pool.map(_spin, range(n))
    wall = time.perf_counter() - start
  return n * one / wall


def plain_loop(root: str, shim: bool) -> tuple[int, float]:
  """(records, seconds) of the rdsamp + np.save loop in a fresh interpreter."""
  with tempfile.TemporaryDirectory() as out:
    res = subprocess.run([sys.executable, "-c", _PLAIN_LOOP, root, out, "1" if shim else "0"],
                         capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  n, seconds = res.stdout.split()
  return int(n), float(seconds)


def convert(root: str, out: str, workers: int, fs: int) -> tuple[int, float, float, float]:
  """(records written, seconds of the whole run, of the conversion stage, and of the conversion
  stage's steady state: the workers' summed time on shards / workers, start-up excluded)."""
  start = time.perf_counter()
  summary = write.build(write.BuildConfig(source="ptbxl", input=root, output=out,
                                          signal=signal.Config(fs=fs), workers=workers,
                                          progress=False))
  return (summary.counts["written"], time.perf_counter() - start,
          summary.stage_seconds["convert"],
          summary.stage_seconds["workers busy (sum)"] / workers)


def resume_seconds(data_dir: str, batch: int, step: int) -> float:
  """Seconds from `train_batches(start_step=step)` to its first batch (one process)."""
  from cgdmer_jax.data import reader
  start = time.perf_counter()
  next(reader.train_batches(data_dir, global_batch_size=batch, seed=0, process_index=0,
                            process_count=1, start_step=step))
  return time.perf_counter() - start


def print_resume(data_dir: str, batch: int, steps: list[int]) -> None:
  resume_seconds(data_dir, batch, 0)  # TensorFlow's one-time start-up is not resumption
  for step in steps:
    sec = resume_seconds(data_dir, batch, step)
    print(f"reader resume at step {step:>7} (batch {batch}, record {step * batch:>11}): "
          f"{sec:6.2f} s to the first batch", flush=True)


def read(out: str, batch: int, batches: int) -> float:
  """Examples/s of train_batches."""
  from cgdmer_jax.data import reader
  it = reader.train_batches(out, global_batch_size=batch, seed=0, process_index=0,
                            process_count=1)
  next(it)  # pipeline start-up and the first shuffle-buffer fill are not throughput
  start = time.perf_counter()
  for _ in itertools.islice(it, batches):
    pass
  return batches * batch / (time.perf_counter() - start)


def main(argv):
  del argv
  steps = [int(s) for s in _RESUME_STEPS.value]
  if _DATA_DIR.value:
    print_resume(_DATA_DIR.value, _BATCH.value, steps)
    return cli.OK
  if not _INPUT.value:
    raise cli.UsageError("pass --input=PTBXL_FOLDER (the whole benchmark) or "
                         "--data_dir=CONVERTED_DATASET (resumption only)")
  root = os.path.abspath(_INPUT.value)
  workers = _WORKERS.value or len(os.sched_getaffinity(0))
  print(f"machine: {len(os.sched_getaffinity(0))} cores available, {effective_cores(workers):.1f} "
        f"of {workers} really free now (CPU-bound check); input {root}; converter "
        f"fs={_FS.value}")
  n, sec = plain_loop(root, shim=False)
  base = n / sec
  print(f"plain loop (rdsamp + np.save, 1 core):       {base:8.0f} records/s ({n} in {sec:.1f} s)")
  n, sec = plain_loop(root, shim=True)
  print(f"plain loop with header-parse shim (1 core):  {n / sec:8.0f} records/s ({sec:.1f} s)")
  with tempfile.TemporaryDirectory() as tmp:
    for w in sorted({1, workers}):
      out = os.path.join(tmp, f"w{w}")
      n, sec, conv, steady = convert(root, out, w, _FS.value)
      for what, t in (("whole run", sec), ("conversion stage", conv),
                      ("steady state", steady)):
        rate = n / t
        print(f"converter, {w} worker(s), {what + ':':<18}{rate:8.0f} records/s ({n} in "
              f"{t:.1f} s); per core {rate / w:.0f}/s = {rate / w / base:.2f}x the plain "
              "loop per core")
    rate = read(out, _BATCH.value, _READ_BATCHES.value)
    print(f"reader train_batches (batch {_BATCH.value}, fs={_FS.value}):   {rate:8.0f} "
          f"examples/s = {rate / _BATCH.value:.0f} batches/s")
    print_resume(out, _BATCH.value, steps)


if __name__ == "__main__":
  cli.run(main)
