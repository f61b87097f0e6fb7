"""From label-table rows to canonical signals: locating each row's record and reading it once.

PTB-XL rows name their record by path (`filename_lr` / `filename_hr` relative to the PTB-XL
root); CPSC and Chapman rows by name (`A1983`, `/chapman/WFDBRecords/12/120/JS11438.mat`), found
by file name anywhere under the dataset's folder. Records are read by the converter's code
(`data_pipelines.locate`) at the model's rate and length, with partial-lead records carried
(missing leads masked) so that every labelled ECG is scored. Rows whose record is absent or
unreadable are left out and listed in the results, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from cgdmer_jax import progress as progress_lib
from cgdmer_jax.evaluators import leads
from cgdmer_jax.evaluators import tasks as tasks_lib
from data_pipelines import locate
from data_pipelines.sources import base as source_base

SPLITS = tasks_lib.SPLITS


def _ptbxl_locator(root: pathlib.Path, prefer_hr: bool):
  def find(row) -> locate.Located | None:
    cols = ("filename_hr", "filename_lr") if prefer_hr else ("filename_lr", "filename_hr")
    for col in cols:
      rel = row.get(col)
      if isinstance(rel, str) and rel and (root / f"{rel}.hea").is_file():
        return locate.Located("wfdb_dir", root, rel)
    return None
  return find


def _name_locator(root: pathlib.Path, column: str):
  index = locate.index_by_name(root) if root.is_dir() else {}
  def find(row) -> locate.Located | None:
    value = row.get(column)
    if not isinstance(value, str) or not value:
      return None
    name = pathlib.PurePosixPath(value.replace("\\", "/")).name
    for suffix in (".mat", ".hea", ".dat"):
      if name.endswith(suffix):
        name = name[:-len(suffix)]
    return index.get(name)
  return find


def locator(task: tasks_lib.Task, data_root: str | pathlib.Path, fs: int):
  """A function from a label row (dict) to its `Located` record, or None when absent."""
  source_base.require_local(data_root, "data root")
  root = pathlib.Path(data_root) / task.root
  if task.root == "ptbxl":
    return _ptbxl_locator(root, prefer_hr=fs > 100)
  return _name_locator(root, task.id_columns[0])


# Encoder outputs kept per record: the zero-shot space and the two probe-able parts.
OUTPUTS = ("embedding", "shared", "specific")


@dataclasses.dataclass
class TaskData:
  """One task's features and labels per split, with what was left out.

  `rows[split]` are the label-table row numbers of the kept records (aligned with `x`, `y`),
  so label subsets can be drawn on the whole table and then intersected with what was read.
  """
  classes: tuple[str, ...]
  x: dict[str, dict[str, np.ndarray]]   # split -> output name -> [N, D]
  y: dict[str, np.ndarray]              # split -> [N, C]
  left_out: dict[str, list[dict]]       # split -> [{row, reason}]
  rows: dict[str, np.ndarray]           # split -> [N] table row numbers
  table_rows: dict[str, int]            # split -> rows in the label table

  def counts(self) -> dict[str, int]:
    return {s: int(len(y)) for s, y in self.y.items()}


class FeatureCache:
  """Embeds each record once per model, whatever the number of tasks that use it.

  With a lead set (`keep`, `leads.keep_mask`) every other lead is hidden before embedding
  (`leads.apply`), and a record that recorded none of the set's leads is left out with that
  reason.
  """

  def __init__(self, encoder, *, progress: bool = True, keep: np.ndarray | None = None):
    self.encoder = encoder
    self.reader = locate.CanonicalReader(encoder.signal_config(min_leads=1))
    self.progress = progress
    self.keep = None if keep is None or np.all(keep) else np.asarray(keep, bool)
    self._feats: dict[str, dict[str, np.ndarray] | str] = {}

  def fetch(self, locs: list[locate.Located]) -> list[dict[str, np.ndarray] | str]:
    """Per record: its features ({embedding, probe}), or the reason it could not be read."""
    todo = [loc for loc in dict.fromkeys(locs) if loc.path not in self._feats]
    batch: list[tuple[locate.Located, object]] = []

    def flush():
      if not batch:
        return
      ecg = np.stack([c.millivolts for _, c in batch])
      lead_mask = np.stack([c.lead_mask for _, c in batch])
      if self.keep is not None:
        ecg, lead_mask = leads.apply(ecg, lead_mask, self.keep)
      outs = self.encoder.embed_ecg(ecg, np.asarray([c.valid_len for _, c in batch]), lead_mask)
      for i, (loc, _) in enumerate(batch):
        self._feats[loc.path] = {k: outs[k][i] for k in OUTPUTS}
      batch.clear()

    for loc, canon, reason in progress_lib.bar(
        self.reader.read_many(todo), total=len(todo), desc=f"embed {self.encoder.name}",
        unit="rec", disable=not self.progress or len(todo) < 256):
      if canon is not None and self.keep is not None:
        reason = leads.missing_reason(canon.lead_mask, self.keep)
        canon = None if reason else canon
      if canon is None:
        self._feats[loc.path] = reason
        continue
      batch.append((loc, canon))
      if len(batch) >= 4 * self.encoder.batch_size:
        flush()
    flush()
    return [self._feats[loc.path] for loc in locs]


def load_task(task: tasks_lib.Task, data_root, tables_root, cache: FeatureCache,
              splits_needed=SPLITS) -> TaskData:
  """Features and labels of `splits_needed` of `task` (the other splits are not read)."""
  splits = tasks_lib.read_labels(task, tables_root)
  find = locator(task, data_root, cache.encoder.fs)
  x, y, left_out, kept_rows = {}, {}, {}, {}
  for split in splits_needed:
    frame = splits[split].frame
    rows = frame.to_dict("records")
    locs = [find(r) for r in rows]
    present = [i for i, loc in enumerate(locs) if loc is not None]
    feats = cache.fetch([locs[i] for i in present])
    keep, left = [], []
    for i, loc in enumerate(locs):
      if loc is None:
        left.append({"row": i, "reason": f"record not found under {data_root}/{task.root}"})
    for i, f in zip(present, feats):
      if isinstance(f, str):
        left.append({"row": i, "reason": f})
      else:
        keep.append((i, f))
    idx = np.asarray([i for i, _ in keep], dtype=np.int64)
    y[split] = splits[split].y[idx] if len(idx) else splits[split].y[:0]
    x[split] = {k: (np.stack([f[k] for _, f in keep]) if keep else np.zeros((0, 0), np.float32))
                for k in OUTPUTS}
    kept_rows[split] = idx
    left_out[split] = sorted(left, key=lambda r: r["row"])
  return TaskData(splits["train"].classes, x, y, left_out, kept_rows,
                  {s: len(splits[s].frame) for s in splits_needed})
