"""The MERL benchmark tasks: where their label tables are and how to read them by column name.

MERL's public tables (ICML 2024) hold one row per ECG with metadata columns followed by
one-hot class columns. The sub-class tables order the class columns differently in train
and in val/test (AVB, RAO/RAE, ISC), so classes are always taken BY NAME: the train table's
column order defines the class order and val/test are re-indexed to it.

Splits: PTB-XL tasks have one table per split (folds 1-8 / 9 / 10); CPSC2018 and
Chapman-Shaoxing-Ningbo have one table with a `merl_split` column.

Chapman-Shaoxing-Ningbo labels are read two ways. MERL built the 0/1 columns of
`labels_chapman_merl.csv` by a substring match on the comma-joined `diagnose` string, so `AVB`
also marks `VB`, `AFIB` marks `AF`, `STTC` marks `ST` (7 of the 38 classes are supersets of the
truth). `csn` reads the columns as they are (`labels="merl"`, comparable with published
numbers); `csn_exact` makes a class positive when it is one of the comma-separated tokens of
`diagnose` (`labels="exact"`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import pandas as pd

from cgdmer_jax.evaluators import attributes
from data_pipelines.sources import base as source_base

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Task:
  """One benchmark task.

  Attributes:
    name: task name on the command line.
    root: folder of the dataset's records, relative to the data root.
    tables: table paths relative to the tables root; `{split}` is replaced by the split
      name, or one table with a split column.
    split_column: the column naming the split, for single-table tasks.
    id_columns: columns that locate the record, tried in order (see `records.py`).
    meta_columns: non-label columns; every other column is a class.
    labels: how the classes are read: "table" (the 0/1 columns), "merl" (the same, named after
      a table built by MERL's substring match) or "exact" (tokens of `diagnosis_column`).
    diagnosis_column: the comma-separated diagnosis column of the "merl"/"exact" readings.
    zero_shot: whether the classes have prompts (attribute tasks have none).
  """
  name: str
  root: str
  tables: str
  split_column: str | None
  id_columns: tuple[str, ...]
  meta_columns: tuple[str, ...]
  labels: str = "table"
  diagnosis_column: str | None = None
  zero_shot: bool = True


_PTBXL_META = ("ecg_id", "patient_id", "strat_fold", "filename_lr", "filename_hr")


def _ptbxl(task: str, sub: str) -> Task:
  return Task(name=f"ptbxl_{task}", root="ptbxl",
              tables=f"ptbxl/merl_splits/{sub}/ptbxl_{sub}_{{split}}.csv", split_column=None,
              id_columns=("filename_lr", "filename_hr"), meta_columns=_PTBXL_META + (sub,))


TASKS: dict[str, Task] = {
    "ptbxl_super": _ptbxl("super", "super_class"),
    "ptbxl_sub": _ptbxl("sub", "sub_class"),
    "ptbxl_form": _ptbxl("form", "form"),
    "ptbxl_rhythm": _ptbxl("rhythm", "rhythm"),
    "cpsc2018": Task(name="cpsc2018", root="cpsc2018", tables="cpsc2018/labels_icbeb_merl.csv",
                     split_column="merl_split", id_columns=("filename",),
                     meta_columns=("patient_id", "ecg_id", "filename", "validation", "age",
                                   "sex", "scp_codes", "merl_split")),
    "csn": Task(name="csn", root="csn", tables="csn/labels_chapman_merl.csv",
                split_column="merl_split", id_columns=("ecg_path",),
                meta_columns=("ecg_path", "age", "diagnose", "merl_split"), labels="merl",
                diagnosis_column="diagnose"),
}
TASKS["csn_exact"] = dataclasses.replace(TASKS["csn"], name="csn_exact", labels="exact")
# What the ECG shows and the report seldom states (attributes.py): probed, no zero-shot.
for _name in attributes.CLASSES:
  TASKS[_name] = Task(name=_name, root="ptbxl", tables=attributes.TABLE, split_column=None,
                      id_columns=("filename_lr", "filename_hr"), meta_columns=(),
                      labels="attributes", zero_shot=False)
# The label readings of the CSN task, by the name `evaluate --csn_labels` takes.
CSN_READINGS = {"merl": "csn", "exact": "csn_exact"}


def exact_labels(diagnoses, classes) -> np.ndarray:
  """[N, C] 0/1: a class is positive when it is one of the comma-separated diagnosis tokens.

  Args:
    diagnoses: N diagnosis strings such as "AFIB,RBBB,TWC" (NaN/empty: no token).
    classes: C class names.

  Returns:
    int8 labels.
  """
  y = np.zeros((len(diagnoses), len(classes)), np.int8)
  col = {c: j for j, c in enumerate(classes)}
  for i, d in enumerate(diagnoses):
    if isinstance(d, str):
      for token in d.split(","):
        j = col.get(token.strip())
        if j is not None:
          y[i, j] = 1
  return y


def label_positives(task: "Task | str", tables_root) -> dict[str, dict[str, int]]:
  """Positives per class over the whole table under each reading the task's table allows."""
  task = TASKS[task] if isinstance(task, str) else task
  readings = ["table"] if task.diagnosis_column is None else ["merl", "exact"]
  out = {}
  for reading in readings:
    splits = read_labels(dataclasses.replace(task, labels=reading), tables_root)
    classes = splits["train"].classes
    total = sum(s.y.sum(0) for s in splits.values())
    out[reading] = {c: int(v) for c, v in zip(classes, total)}
  return out


@dataclasses.dataclass
class Split:
  """Labels of one split: rows of `frame` (metadata) aligned with `y` [N, C] in class order."""
  frame: pd.DataFrame
  y: np.ndarray
  classes: tuple[str, ...]


def _label_columns(df: pd.DataFrame, task: Task, path: pathlib.Path) -> list[str]:
  cols = [c for c in df.columns if c not in task.meta_columns and not c.startswith("Unnamed")]
  if not cols:
    raise ValueError(f"{path}: no class columns (columns: {list(df.columns)})")
  for c in cols:
    values = pd.unique(df[c].dropna())
    if not set(np.asarray(values).tolist()) <= {0, 1}:
      raise ValueError(f"{path}: column {c!r} is not a 0/1 class column (values "
                       f"{sorted(map(str, values))[:5]}); add it to the task's meta_columns "
                       "if it is metadata")
  return cols


def read_labels(task: Task | str, tables_root: str | os.PathLike) -> dict[str, Split]:
  """Reads a task's label tables, classes by name in the train table's order.

  Args:
    task: a `Task` or a key of `TASKS`.
    tables_root: folder the task's table paths are relative to.

  Returns:
    {split: Split} for train, val and test (a split with no rows has an empty frame).

  Raises:
    FileNotFoundError: a table is missing.
    ValueError: the splits do not have the same set of classes.
  """
  task = TASKS[task] if isinstance(task, str) else task
  source_base.require_local(tables_root, "label tables' folder")
  root = pathlib.Path(tables_root)
  if task.labels == "attributes":
    path = root / task.tables
    if not path.exists():
      raise FileNotFoundError(f"table for {task.name} not found: {path}")
    classes = attributes.CLASSES[task.name]
    return {split: Split(frame=frame, y=y, classes=classes)
            for split, (frame, y) in attributes.read_splits(task.name, path).items()}
  frames: dict[str, tuple[pd.DataFrame, pathlib.Path]] = {}
  if task.split_column is None:
    for split in SPLITS:
      path = root / task.tables.format(split=split)
      if not path.exists():
        raise FileNotFoundError(f"label table for {task.name}/{split} not found: {path}")
      frames[split] = (pd.read_csv(path), path)
  else:
    path = root / task.tables
    if not path.exists():
      raise FileNotFoundError(f"label table for {task.name} not found: {path}")
    df = pd.read_csv(path)
    if task.split_column not in df.columns:
      raise ValueError(f"{path}: split column {task.split_column!r} missing")
    unknown = set(df[task.split_column].astype(str)) - set(SPLITS)
    if unknown:
      raise ValueError(f"{path}: unknown split names {sorted(unknown)}")
    for split in SPLITS:
      frames[split] = (df[df[task.split_column] == split].reset_index(drop=True), path)

  train_df, train_path = frames["train"]
  classes = tuple(_label_columns(train_df, task, train_path))
  out = {}
  for split, (df, path) in frames.items():
    cols = _label_columns(df, task, path) if len(df) else list(classes)
    if set(cols) != set(classes):
      raise ValueError(f"{path}: classes differ from the train table: missing "
                       f"{sorted(set(classes) - set(cols))}, extra "
                       f"{sorted(set(cols) - set(classes))}")
    y = df[list(classes)].to_numpy(dtype=np.int8) if len(df) else np.zeros((0, len(classes)),
                                                                            np.int8)
    if task.labels == "exact":
      if task.diagnosis_column not in df.columns and len(df):
        raise ValueError(f"{path}: no {task.diagnosis_column!r} column for exact labels")
      y = exact_labels(df[task.diagnosis_column].tolist() if len(df) else [], classes)
    elif task.labels not in ("table", "merl"):
      raise ValueError(f"unknown label reading {task.labels!r} of task {task.name}")
    out[split] = Split(frame=df.reset_index(drop=True), y=y, classes=classes)
  return out
