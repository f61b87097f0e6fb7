"""A user's own labelled ECGs as a task: a folder of records and a CSV of labels.

The CSV (`--labels_csv`) has one row per ECG and the columns
  record   the record's path relative to `--records_dir` (with or without its extension), or
           its file name when that name is unique under the folder
  split    train, val or test
  <class>  one 0/1 column per class (every other column)
A `tasks.Task` is built from it at run time, so the benchmark's label reading, staging and
scoring apply unchanged. Records absent on disk are left out and listed (the run stops only
when no training record is readable); a malformed table stops the run with one line naming
the problem.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pandas as pd

from cgdmer_jax.evaluators import tasks as tasks_lib
from data_pipelines import locate
from data_pipelines.sources import base as source_base

RECORD, SPLIT = "record", "split"


def read_task(labels_csv: str | os.PathLike) -> tasks_lib.Task:
  """Checks the labels CSV and returns its task (named after the file).

  Args:
    labels_csv: the CSV described in the module docstring.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a missing `record`/`split` column, no class column, a class column that is
      not 0/1, an unknown split name, or no train row.
  """
  source_base.require_local(labels_csv, "--labels_csv")
  path = pathlib.Path(labels_csv)
  if not path.is_file():
    raise FileNotFoundError(f"--labels_csv {path}: no such file")
  try:
    df = pd.read_csv(path)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise ValueError(f"--labels_csv {path}: not a readable CSV ({str(e).splitlines()[0]})"
                     ) from None
  for column in (RECORD, SPLIT):
    if column not in df.columns:
      raise ValueError(f"--labels_csv {path}: no {column!r} column (columns: "
                       f"{', '.join(map(str, df.columns))}); it needs record, split and one "
                       "0/1 column per class")
  classes = [c for c in df.columns if c not in (RECORD, SPLIT)]
  if not classes:
    raise ValueError(f"--labels_csv {path}: no class columns besides record and split")
  for c in classes:
    values = pd.unique(df[c])
    if df[c].isna().any() or not set(np.asarray(values).tolist()) <= {0, 1}:
      shown = sorted(map(str, values))[:5]
      raise ValueError(f"--labels_csv {path}: column {c!r} is not a 0/1 label column (values "
                       f"{', '.join(shown)})")
  splits = df[SPLIT].astype(str)
  unknown = sorted(set(splits) - set(tasks_lib.SPLITS))
  if unknown:
    raise ValueError(f"--labels_csv {path}: unknown split names {unknown} in column 'split'; "
                     f"use {', '.join(tasks_lib.SPLITS)}")
  if not (splits == "train").any():
    raise ValueError(f"--labels_csv {path}: no row has split 'train'")
  return tasks_lib.Task(name=path.stem, root="", tables=str(path.resolve()),
                        split_column=SPLIT, id_columns=(RECORD,),
                        meta_columns=(RECORD, SPLIT))


def locator(records_dir: str | os.PathLike):
  """Label row -> the `Located` record its `record` names under `records_dir`, or None.

  Args:
    records_dir: the folder of the user's records.

  Returns:
    The locator function (a bare record name is looked up in an index of the folder, built
    on first use).

  Raises:
    FileNotFoundError: `records_dir` is not a folder.
  """
  source_base.require_local(records_dir, "--records_dir")
  root = pathlib.Path(records_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"--records_dir {root} is not a folder")
  by_name: dict[str, locate.Located] | None = None

  def find(row) -> locate.Located | None:
    nonlocal by_name
    value = str(row.get(RECORD, "")).strip().replace("\\", "/")
    if not value or value == "nan":
      return None
    try:
      return locate.locate_file(root / value)
    except FileNotFoundError:
      pass
    if "/" in value:
      return None
    if by_name is None:  # a bare name: look it up anywhere under the folder, once indexed
      by_name = locate.index_by_name(root)
    name = value
    for suffix in (".hea", ".mat", ".dat"):
      name = name[:-len(suffix)] if name.endswith(suffix) else name
    return by_name.get(name)
  return find
