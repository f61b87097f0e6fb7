"""Labelled records staged once into memory-mapped arrays, and the batches drawn from them.

Every record of a task's split is read once, by the converter's code
(`locate.CanonicalReader` at the model's rate and length, partial-lead records carried with
their lead mask), and written as int16 microvolts into `.npy` files of a local cache folder:

  <cache>/<task>_<split>-<key>/ecg.npy        int16 [N, 12, T]  (opened memory-mapped)
                               lead_mask.npy  bool [N, 12]
                               valid_len.npy  int32 [N]
                               rows.npy       int64 [N]  label-table rows of the readable records
                               meta.json      count, the unreadable rows with their reasons

`<key>` hashes the located record paths, the rate and the length, so every model, label
fraction and rerun with the same records reuses one staging; a staging is written to a
temporary folder and renamed when whole. Epochs then read batches from the memory-mapped
file: memory does not grow with the dataset. The folder is local (numpy maps local files;
`--cache_dir` names it), which is why this module uses `pathlib`.

Rows whose record is absent or unreadable, or (with a reduced lead set, `leads.py`) recorded
none of the chosen leads, are left out and listed with the reason, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
from typing import Callable

import numpy as np

from cgdmer_jax import progress as progress_lib
from cgdmer_jax.data import features
from cgdmer_jax.evaluators import leads as leads_lib
from cgdmer_jax.evaluators import tasks as tasks_lib
from data_pipelines import locate
from data_pipelines import signal

STAGING_VERSION = 1


@dataclasses.dataclass
class Store:
  """One staged split: the readable records' signals (memory-mapped) and table rows."""
  ecg: np.ndarray        # int16 [N, 12, T] µV
  lead_mask: np.ndarray  # bool [N, 12]
  valid_len: np.ndarray  # int32 [N]
  rows: np.ndarray       # int64 [N]


def _key(located: list[tuple[int, locate.Located]], config: signal.Config) -> str:
  spec = [STAGING_VERSION, config.fs, config.seconds,
          [(row, loc.source, loc.path) for row, loc in located]]
  return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def _write(folder: pathlib.Path, located, reader: locate.CanonicalReader, desc: str,
           progress: bool) -> None:
  tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  n, T = len(located), reader.config.num_samples
  ecg = (np.lib.format.open_memmap(tmp / "ecg.npy", "w+", np.int16, (n, features.NUM_LEADS, T))
         if n else None)
  mask = np.zeros((n, features.NUM_LEADS), bool)
  valid = np.zeros((n,), np.int32)
  rows, unreadable = [], []
  row_of = {loc.path: row for row, loc in located}
  for loc, canon, reason in progress_lib.bar(
      reader.read_many([loc for _, loc in located]), total=n, desc=f"stage {desc}",
      unit="rec", disable=not progress or n < 256):
    if canon is None:
      unreadable.append({"row": row_of[loc.path], "reason": reason})
      continue
    k = len(rows)
    ecg[k], mask[k], valid[k] = canon.ecg, canon.lead_mask, canon.valid_len
    rows.append(row_of[loc.path])
  if ecg is not None:
    ecg.flush()
    del ecg
  k = len(rows)
  np.save(tmp / "lead_mask.npy", mask[:k])
  np.save(tmp / "valid_len.npy", valid[:k])
  np.save(tmp / "rows.npy", np.asarray(rows, np.int64))
  (tmp / "meta.json").write_text(json.dumps({"count": k, "num_samples": T,
                                             "unreadable": unreadable}))
  try:
    os.replace(tmp, folder)
  except OSError:  # another process staged the same records meanwhile: keep theirs
    shutil.rmtree(tmp, ignore_errors=True)


def stage(cache_dir: str | os.PathLike, name: str, located: list[tuple[int, locate.Located]],
          config: signal.Config, *, progress: bool = True) -> tuple[Store, list[dict]]:
  """The staged signals of `located` records, staging them first if needed.

  Args:
    cache_dir: the local cache folder.
    name: readable part of the staging's folder name (`<task>_<split>`).
    located: (label-table row, record) of the records to stage.
    config: the canonicalisation (the model's rate and length; partial leads carried).
    progress: progress bar while reading.

  Returns:
    (store, unreadable rows [{row, reason}]).
  """
  folder = pathlib.Path(cache_dir) / f"{name}-{_key(located, config)}"
  if not (folder / "meta.json").is_file():
    folder.parent.mkdir(parents=True, exist_ok=True)
    _write(folder, located, locate.CanonicalReader(config), name, progress)
  meta = json.loads((folder / "meta.json").read_text())
  k = int(meta["count"])
  if k:
    ecg = np.load(folder / "ecg.npy", mmap_mode="r")[:k]
  else:
    ecg = np.zeros((0, features.NUM_LEADS, int(meta["num_samples"])), np.int16)
  store = Store(ecg=ecg, lead_mask=np.load(folder / "lead_mask.npy"),
                valid_len=np.load(folder / "valid_len.npy"), rows=np.load(folder / "rows.npy"))
  return store, list(meta["unreadable"])


@dataclasses.dataclass
class Split:
  """The kept records of one split: positions in its store, labels and table rows."""
  store: Store
  pos: np.ndarray   # [n] positions in the store
  y: np.ndarray     # [n, C] 0/1
  rows: np.ndarray  # [n] label-table rows

  def __len__(self) -> int:
    return len(self.pos)

  def take(self, idx: np.ndarray) -> "Split":
    """The records at `idx` (positions in this split)."""
    idx = np.asarray(idx, np.int64)
    return Split(self.store, self.pos[idx], self.y[idx], self.rows[idx])


@dataclasses.dataclass
class TaskData:
  """One task's staged splits, with what was left out and the label tables' sizes."""
  classes: tuple[str, ...]
  splits: dict[str, Split]
  left_out: dict[str, list[dict]]  # split -> [{row, reason}]
  table_rows: dict[str, int]

  def counts(self) -> dict[str, int]:
    return {s: len(d) for s, d in self.splits.items()}


def load_task(task: tasks_lib.Task, tables_root, find: Callable, missing_reason: str,
              cache_dir, config: signal.Config, *, keep: np.ndarray | None = None,
              splits_needed=tasks_lib.SPLITS, progress: bool = True) -> TaskData:
  """A task's labels and staged signals for `splits_needed` (the others are not read).

  Args:
    task: the task (`tasks.TASKS` or a custom one).
    tables_root: folder the task's label tables are relative to.
    find: label row (dict) -> `Located` or None (`records.locator` or a custom locator).
    missing_reason: the reason listed for a row whose record is not found.
    cache_dir: the local staging folder.
    config: the model's canonicalisation.
    keep: bool [12] lead set (`leads.keep_mask`); None: all leads.
    splits_needed: the splits to read.
    progress: progress bars.

  Returns:
    The task's `TaskData`: classes in the train table's order, the kept records of each
    split, the rows left out with their reasons and the label tables' row counts.
  """
  labels = tasks_lib.read_labels(task, tables_root)
  splits, left_out = {}, {}
  for split in splits_needed:
    frame_rows = labels[split].frame.to_dict("records")
    locs = [find(r) for r in frame_rows]
    left = [{"row": i, "reason": missing_reason} for i, loc in enumerate(locs) if loc is None]
    present = [(i, loc) for i, loc in enumerate(locs) if loc is not None]
    store, unreadable = stage(cache_dir, f"{task.name}_{split}", present, config,
                              progress=progress)
    left += unreadable
    kept = []
    for k in range(len(store.rows)):
      reason = None if keep is None else leads_lib.missing_reason(store.lead_mask[k], keep)
      if reason:
        left.append({"row": int(store.rows[k]), "reason": reason})
      else:
        kept.append(k)
    pos = np.asarray(kept, np.int64)
    rows = store.rows[pos]
    splits[split] = Split(store, pos, labels[split].y[rows], rows)
    left_out[split] = sorted(left, key=lambda r: r["row"])
  return TaskData(labels["train"].classes, splits, left_out,
                  {s: len(labels[s].frame) for s in splits_needed})


def batch(split: Split, idx: np.ndarray, size: int, keep: np.ndarray | None = None
          ) -> dict[str, np.ndarray]:
  """Records `idx` of `split` as one batch of `size` rows, the rest zero rows of weight 0.

  Args:
    split: the split.
    idx: positions in the split (at most `size`).
    size: the static batch size.
    keep: bool [12] lead set; the other leads are hidden (`leads.apply`).

  Returns:
    {ecg int16 [size, 12, T], valid_len int32, lead_mask bool, y float32 [size, C],
     weight float32 [size]}.
  """
  idx = np.asarray(idx, np.int64)
  pos = split.pos[idx]
  n = len(pos)
  ecg = np.asarray(split.store.ecg[np.sort(pos)])  # sorted: sequential reads of the file
  order = np.argsort(np.argsort(pos))
  ecg, mask = ecg[order], split.store.lead_mask[pos]
  if keep is not None:
    ecg, mask = leads_lib.apply(ecg, mask, keep)

  def pad(a, dtype):
    out = np.zeros((size,) + a.shape[1:], dtype)
    out[:n] = a
    return out
  return {"ecg": pad(ecg, np.int16), "valid_len": pad(split.store.valid_len[pos], np.int32),
          "lead_mask": pad(mask, bool), "y": pad(split.y[idx], np.float32),
          "weight": pad(np.ones((n,), np.float32), np.float32)}
