"""The converter: input folder -> sharded TFRecords + metadata, resumable and idempotent.

`build(config)` runs these stages:

1. **List** the source's records (no signal read), clean their reports, assign splits by
   patient (`splits.assign`), order each split by record hash and cut it into shards.
2. **Tokenizer**: `--tokenizer` if given (a SentencePiece model, or `hf:DIR`: the WordPiece
   tokenizer of a pretrained checkpoint folder, `wordpiece.py`); else the output's own
   `tokenizer.model` when a previous run trained it on the same corpus; else trained on the
   TRAIN split's reports.
3. **Plan check**: a fingerprint of everything that decides the output bytes (config, input,
   tokenizer, the records of every shard) is kept in `_build/plan.json`. Rerunning with the
   same plan resumes; a different plan in a non-empty output is refused unless --overwrite.
4. **Convert** pending shards, one task per shard, on a process pool (`shard_worker`), or
   with `runner="beam"` as a Beam pipeline (`beam_runner`): completed shards (manifest part
   present) are skipped, so an interrupted run continues where it stopped and a finished one
   does nothing but rewrite identical metadata.
5. **Metadata** (`metadata`): manifest.csv, TFDS dataset_info.json/features.json,
   build_info.json last.

Output: a local folder or an object-storage URL (`gs://bucket/...`): every output file goes
through `tfrecord` (pathlib locally, etils.epath for a URL; what is atomic where is said
there). The input is a local folder.

Memory: only the listing (record ids, patients, reports: ~200 bytes a record, ~160 MB for
800k records) is held; signals live in one worker at a time, one record at a time.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time
from concurrent import futures

import tqdm
from absl import logging

from cgdmer_jax.data import features
from data_pipelines import beam_runner
from data_pipelines import metadata
from data_pipelines import reports
from data_pipelines import shard_worker
from data_pipelines import signal as signal_lib
from data_pipelines import sources
from data_pipelines import splits as splits_lib
from data_pipelines import tfrecord
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import wordpiece

# Automatic shard count: ~128 MiB shards, but at least min(16, n/256) shards per split so
# small splits still spread over workers and hosts.
_SHARD_BYTES = 128 << 20
_MIN_PER_SHARD = 256


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  """Converter options (one per CLI flag; see `data_pipelines.build --help`)."""
  source: str
  input: str
  output: str
  signal: signal_lib.Config = signal_lib.Config()
  shards: int = 0
  vocab_size: int = 8000
  tokenizer: str | None = None
  max_report_len: int = 128
  workers: int = 0
  split_mode: str = "auto"
  val_fraction: float = 0.1
  test_fraction: float = 0.1
  ptbxl_hr: bool = False
  overwrite: bool = False
  progress: bool = True
  runner: str = "local"
  beam_options: str = ""


@dataclasses.dataclass
class Summary:
  """What a build did: the counts of build_info.json plus this run's timing."""
  counts: dict
  seconds: float
  converted_now: int
  shards_skipped: int
  output: str
  stage_seconds: dict = dataclasses.field(default_factory=dict)

  def format(self) -> str:
    c = self.counts
    lines = [f"output: {self.output}",
             f"records: {c['listed']} listed, {c['written']} written, "
             f"{c['rejected']} rejected"]
    for reason, n in c["rejected_by_reason"].items():
      lines.append(f"  rejected {n:>7}  {reason}")
    for split, sc in c["by_split"].items():
      lines.append(f"  {split:<5}: {sc['written']} written, {sc['rejected']} rejected")
    lines.append(f"NaN: {c['nan_samples']} samples filled in {c['nan_records']} records; "
                 f"clipped: {c['clipped_samples']} samples in {c['clipped_records']} records")
    rate = self.converted_now / self.seconds if self.seconds > 0 else 0.0
    lines.append(f"time: {self.seconds:.1f} s for {self.converted_now} records converted "
                 f"now ({rate:.0f} records/s); {self.shards_skipped} shards already done")
    lines.append("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_seconds.items()))
    return "\n".join(lines)


def auto_shards(num_records: int, num_samples: int, max_report_len: int) -> int:
  """Default shard count of a split (see `_SHARD_BYTES`)."""
  if num_records <= 0:
    return 0
  per_record = features.NUM_LEADS * num_samples * 2 + max_report_len * 2 + 400
  by_size = math.ceil(num_records * per_record / _SHARD_BYTES)
  by_count = min(16, math.ceil(num_records / _MIN_PER_SHARD))
  return max(1, by_size, by_count)


def plan(config: BuildConfig, refs: list[sources.RecordRef]) -> list[shard_worker.ShardTask]:
  """Splits and shards (deterministic in the listing and the config)."""
  assigned = splits_lib.assign([r.patient for r in refs], [r.split_hint for r in refs],
                               mode=config.split_mode, val_fraction=config.val_fraction,
                               test_fraction=config.test_fraction)
  by_split = collections.defaultdict(list)
  for ref, split in zip(refs, assigned):
    by_split[split].append(ref)
  tasks = []
  for split in features.SPLITS:
    members = sorted(by_split.get(split, []), key=lambda r: splits_lib.shard_order(r.record))
    if not members:
      continue
    n = (min(config.shards, len(members)) if config.shards > 0 else
         auto_shards(len(members), config.signal.num_samples, config.max_report_len))
    for i in range(n):
      lo, hi = len(members) * i // n, len(members) * (i + 1) // n
      tasks.append(shard_worker.ShardTask(split, i, n, members[lo:hi]))
  return tasks


def _sha(data: bytes | str) -> str:
  return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def _fingerprint(config: BuildConfig, tasks, tokenizer_sha: str | None) -> dict:
  shards = {}
  for t in tasks:
    digest = _sha("\n".join(f"{r.record}\t{r.patient}\t{r.report}" for r in t.refs))
    shards[t.part_name] = [len(t.refs), digest]
  cfg = {"format": metadata.FORMAT_VERSION, "source": config.source,
         "input": str(pathlib.Path(config.input).resolve()),
         "signal": dataclasses.asdict(config.signal), "max_report_len": config.max_report_len,
         "split_mode": config.split_mode, "val_fraction": config.val_fraction,
         "test_fraction": config.test_fraction, "ptbxl_hr": config.ptbxl_hr,
         "tokenizer_sha256": tokenizer_sha}
  return {"config": cfg, "shards": shards}


_OURS = ("dataset_info.json", "features.json", features.BUILD_INFO_FILE,
         features.MANIFEST_FILE, features.TOKENIZER_FILE, wordpiece.FILE)


def _our_files(out):
  for p in out.iterdir():
    if (p.name in _OURS or p.name.startswith(f"{features.DATASET_NAME}-")
        or ".tmp-" in p.name):
      yield p


def _prepare_output(config: BuildConfig, out, fingerprint: dict) -> None:
  """Checks the output folder against the plan; clears what must be rebuilt."""
  state = out / shard_worker.BUILD_DIR / "plan.json"
  if out.exists() and any(out.iterdir()):
    old = json.loads(state.read_text()) if state.is_file() else None
    ours = set(_our_files(out)) | {out / shard_worker.BUILD_DIR}
    foreign = [p for p in out.iterdir() if p not in ours]
    # A folder holding only our files but no plan is a run that died before its plan was
    # written: start it afresh.
    if old != fingerprint and (old is not None or foreign):
      if not config.overwrite:
        what = "a different build" if old else "files that are not a build of this tool"
        changed = ([k for k in fingerprint["config"] if old["config"].get(k)
                    != fingerprint["config"][k]] or ["the input records"]) if old else []
        raise FileExistsError(
            f"output {out} holds {what}" + (f" (changed: {', '.join(changed)})" if changed
                                            else "")
            + "; pass --overwrite to replace it or choose another --output")
    if old != fingerprint:
      for p in _our_files(out):
        p.unlink()
      tfrecord.rmtree(out / shard_worker.BUILD_DIR)
  out.mkdir(parents=True, exist_ok=True)
  # Metadata marks a finished dataset: it goes until this run has finished too.
  for name in ("dataset_info.json", "features.json", features.BUILD_INFO_FILE,
               features.MANIFEST_FILE):
    (out / name).unlink(missing_ok=True)
  for p in list(out.glob("*.tmp-*")) + tfrecord.find(out / shard_worker.BUILD_DIR, "*.tmp-*"):
    p.unlink()
  (out / shard_worker.BUILD_DIR).mkdir(exist_ok=True)
  metadata.atomic_write(state, json.dumps(fingerprint, indent=1, sort_keys=True))


def _tokenizer(config: BuildConfig, out, tasks, source) -> tuple[bytes | None, str | None]:
  """(model bytes or None, corpus digest) per stage 2 of the module docstring."""
  corpus = [r.report for t in tasks if t.split == "train" for r in t.refs if r.report]
  corpus_sha = _sha("\n".join(sorted(corpus)))
  if config.tokenizer and config.tokenizer.startswith(wordpiece.PREFIX):
    return wordpiece.from_folder(config.tokenizer[len(wordpiece.PREFIX):]).to_bytes(), corpus_sha
  if config.tokenizer:
    proto = tfrecord.output_path(config.tokenizer).read_bytes()  # a local file or a URL
    tokenizer_lib.from_bytes(proto)  # fails now, with the reason, if the special ids differ
    return proto, corpus_sha
  if not corpus:
    if source.has_reports:
      logging.warning("No report in the train split: no tokenizer, report_ids all padding.")
    return None, corpus_sha
  state = out / shard_worker.BUILD_DIR / "tokenizer.json"
  existing = out / features.TOKENIZER_FILE
  if state.is_file() and existing.is_file():
    saved = json.loads(state.read_text())
    proto = existing.read_bytes()
    if saved == {"corpus_sha256": corpus_sha, "vocab_size": config.vocab_size,
                 "model_sha256": _sha(proto)}:
      return proto, corpus_sha
  return tokenizer_lib.train(corpus, config.vocab_size), corpus_sha


def _start_method() -> str:
  """'fork' unless TensorFlow is loaded in this process, then 'spawn'.

  Forked workers start in milliseconds with numpy/scipy/wfdb already imported; spawned ones
  re-import them (~1.5 s each), which is most of a small build. But forking a process whose
  TensorFlow runtime has started threads can deadlock the child, so a process that imported
  TensorFlow (a test session, a notebook) spawns instead. The CLI imports TensorFlow only
  after the conversion (TFDS metadata), so it forks.
  """
  return "spawn" if "tensorflow" in sys.modules else "fork"


def _runner(config: BuildConfig):
  """`run(spec, pending) -> records converted` of `config.runner`, checked before any work."""
  if config.runner == "local":
    return lambda spec, pending: _run_local(config, spec, pending)
  if config.runner != "beam":
    raise ValueError(f"unknown runner {config.runner!r} (local or beam)")
  if config.workers:
    logging.warning("--workers is ignored with --runner=beam: parallelism is the Beam "
                    "runner's (e.g. --beam_options='--direct_num_workers=N').")
  return beam_runner.make_runner(config.beam_options)


def _run_local(config: BuildConfig, spec: shard_worker.WorkerSpec, pending
               ) -> tuple[int, float]:
  """Converts the pending shards on a process pool.

  Returns:
    (records converted, seconds the workers spent on shards, summed over workers: their
    start-up excluded, so records / (that / workers) is the pool's steady rate).
  """
  workers = config.workers or len(os.sched_getaffinity(0))
  total = sum(len(t.refs) for t in pending)
  bar = tqdm.tqdm(total=total, unit="rec", disable=not config.progress or not pending,
                  desc=f"{config.source} -> {tfrecord.output_path(config.output).name}")
  done, busy = 0, 0.0
  try:
    if workers <= 1 or len(pending) <= 1:
      shard_worker.init_worker(spec)
      for task in pending:
        result = shard_worker.convert_shard(task)
        done += result["records"]
        busy += result["seconds"]
        bar.update(len(task.refs))
      return done, busy
    ctx = multiprocessing.get_context(_start_method())
    with futures.ProcessPoolExecutor(min(workers, len(pending)), mp_context=ctx,
                                     initializer=shard_worker.init_worker,
                                     initargs=(spec,)) as pool:
      jobs = [pool.submit(shard_worker.convert_shard, t) for t in pending]
      try:
        for job in futures.as_completed(jobs):
          result = job.result()
          done += result["records"]
          busy += result["seconds"]
          bar.update(result["records"])
      except futures.process.BrokenProcessPool as e:
        raise RuntimeError("a conversion worker died; completed shards are kept: rerun "
                           "the same command to resume") from e
      finally:
        for job in jobs:  # on failure, do not start more shards
          job.cancel()
    return done, busy
  finally:
    bar.close()


def build(config: BuildConfig) -> Summary:
  """Converts `config.input` into a dataset in `config.output` (stages in the docstring).

  Args:
    config: the converter options.

  Returns:
    The `Summary` (also the counts of build_info.json).

  Raises:
    sources.LayoutError: the input is missing or not in the source's layout.
    FileExistsError: the output holds a different build and `overwrite` is False.
    ValueError: bad options, duplicate record ids, untrainable tokenizer.
    RuntimeError: a worker process died (rerun to resume).
    beam_runner.BeamNotInstalledError: `runner="beam"` without apache_beam.
  """
  start = time.perf_counter()
  if config.beam_options and config.runner != "beam":
    raise ValueError("beam_options are only used with runner='beam'")
  run = _runner(config)
  if not 2 <= config.max_report_len:
    raise ValueError("max_report_len must be >= 2 (bos and eos)")
  if not 1 <= config.signal.min_leads <= features.NUM_LEADS:
    raise ValueError(f"min_leads must be in 1..{features.NUM_LEADS}")
  options = {"hr": True} if config.ptbxl_hr and config.source == "ptbxl" else {}
  source = sources.get_source(config.source, config.input, **options)
  refs = [dataclasses.replace(r, report=reports.clean_report(r.report))
          for r in source.list_records()]
  refs.sort(key=lambda r: r.record)
  stages = {"list": time.perf_counter() - start}
  dupes = [a.record for a, b in zip(refs, refs[1:]) if a.record == b.record]
  if dupes:
    raise ValueError(f"duplicate record ids in the listing, e.g. {dupes[:3]}")
  out = tfrecord.output_path(config.output)
  tasks = plan(config, refs)
  mark = time.perf_counter()
  proto, corpus_sha = _tokenizer(config, out, tasks, source)
  stages["tokenizer"] = time.perf_counter() - mark
  tok_sha = _sha(proto) if proto else None
  tok = tokenizer_lib.from_bytes(proto) if proto else None
  _prepare_output(config, out, _fingerprint(config, tasks, tok_sha))
  if proto:
    tok_file = out / tok.file_name
    if not tok_file.is_file() or _sha(tok_file.read_bytes()) != tok_sha:
      metadata.atomic_write(tok_file, proto)
    metadata.atomic_write(out / shard_worker.BUILD_DIR / "tokenizer.json", json.dumps(
        {"corpus_sha256": corpus_sha, "vocab_size": config.vocab_size,
         "model_sha256": tok_sha}, sort_keys=True))
  spec = shard_worker.WorkerSpec(
      source=config.source, input=str(config.input), source_options=options,
      signal=config.signal, tokenizer_proto=proto, max_report_len=config.max_report_len,
      output=str(out))
  pending = [t for t in tasks if not shard_worker.is_complete(out, t)]
  mark = time.perf_counter()
  converted, busy = run(spec, pending)
  stages["convert"] = time.perf_counter() - mark
  if busy is not None:
    stages["workers busy (sum)"] = busy
  mark = time.perf_counter()

  rows = metadata.read_parts(out, tasks)
  metadata.write_manifest(out, rows)
  counts = metadata.counts(rows)
  vocab = tok.vocab_size if tok else 0
  metadata.write_tfds_metadata(
      out, tasks, rows, config.signal.num_samples, config.max_report_len,
      description=f"CG-DMER ECG + report records converted from {config.source} "
                  f"({config.signal.fs} Hz, {config.signal.seconds:g} s, 12 leads).")
  metadata.write_build_info(out, {
      "tool": "data_pipelines.build", "tool_version": metadata.tool_version(),
      "format_version": metadata.FORMAT_VERSION, "source": config.source,
      "source_options": options, "input": str(pathlib.Path(config.input).resolve()),
      "fs": config.signal.fs, "seconds": config.signal.seconds,
      "num_samples": config.signal.num_samples, "leads": list(features.LEADS),
      "units_per_mv": features.UNITS_PER_MV, "min_leads": config.signal.min_leads,
      "max_nan_fraction": config.signal.max_nan_fraction,
      "max_report_len": config.max_report_len, "vocab_size": vocab,
      "vocab_size_requested": None if config.tokenizer else config.vocab_size,
      "tokenizer": tok.file_name if tok else None,
      "tokenizer_kind": tok.kind if tok else None,
      "tokenizer_name": tok.name if tok else None,
      "vocab_sha256": tok.vocab_sha256 if tok else None,
      "special_ids": dict(tok.special_ids if tok else tokenizer_lib.Tokenizer.special_ids),
      "normal_ids_start": tok.normal_ids_start if tok else features.NUM_SPECIAL,
      "split_mode": config.split_mode, "val_fraction": config.val_fraction,
      "test_fraction": config.test_fraction,
      "shards": {s: sum(1 for t in tasks if t.split == s) for s in features.SPLITS
                 if any(t.split == s for t in tasks)},
      "counts": counts})
  stages["metadata"] = time.perf_counter() - mark
  return Summary(counts=counts, seconds=time.perf_counter() - start, converted_now=converted,
                 shards_skipped=len(tasks) - len(pending), output=str(out),
                 stage_seconds=stages)
