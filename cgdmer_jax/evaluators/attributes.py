"""Attribute tasks: what an ECG shows but its report seldom states, from PTB-XL's database table.

They test what a representation keeps beyond the report: `specific` features should carry it
and `shared` ones (aligned with the report) less. Labels come from `ptbxl/ptbxl_database.csv`
(one row per record), split by `strat_fold` as PTB-XL recommends and MERL's tables do
(folds 1-8 train, 9 val, 10 test), and are probed like the diagnosis tasks (macro AUROC of
one-vs-rest classes; sex has both classes because the probes score macro AUROC over two
or more, and the two are complementary):

| task | classes | from |
|---|---|---|
| `ptbxl_sex` | male, female | `sex` (0 male, 1 female) |
| `ptbxl_age` | age_under_50, age_50_to_69, age_70_plus | `age` in years |
| `ptbxl_signal` | noise, baseline_drift | `static_noise` or `burst_noise`; `baseline_drift` |
| `ptbxl_device` | CS100, CS-12, AT-6, AT-60 | `device`, its first word (the recorder family) |

A record whose field is empty or does not parse (no age, a sex other than 0/1, no device) is
not in that task: it is never given a default. An empty noise or drift annotation means none
was noted (PTB-XL's convention), so every record is in `ptbxl_signal`. A device outside the
four families is a record negative for each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TABLE = "ptbxl/ptbxl_database.csv"
FOLDS = {"train": tuple(range(1, 9)), "val": (9,), "test": (10,)}
CLASSES = {
    "ptbxl_sex": ("male", "female"),
    "ptbxl_age": ("age_under_50", "age_50_to_69", "age_70_plus"),
    "ptbxl_signal": ("noise", "baseline_drift"),
    "ptbxl_device": ("CS100", "CS-12", "AT-6", "AT-60"),
}
REQUIRED = ("strat_fold", "filename_lr", "filename_hr")
COLUMNS = {"ptbxl_sex": ("sex",), "ptbxl_age": ("age",),
           "ptbxl_signal": ("static_noise", "burst_noise", "baseline_drift"),
           "ptbxl_device": ("device",)}


def _annotated(column: pd.Series) -> np.ndarray:
  """True where a free-text annotation column holds something other than blanks."""
  return column.fillna("").astype(str).str.strip().ne("").to_numpy()


def labels(task: str, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
  """Which rows of the database table are in `task`, and their 0/1 labels.

  Args:
    task: a key of `CLASSES`.
    frame: rows of `ptbxl_database.csv`.

  Returns:
    (keep bool [N], y int8 [kept rows, len(CLASSES[task])]).
  """
  if task == "ptbxl_sex":
    sex = pd.to_numeric(frame["sex"], errors="coerce").to_numpy()
    keep = np.isin(sex, (0, 1))
    return keep, np.stack([sex[keep] == 0, sex[keep] == 1], 1).astype(np.int8)
  if task == "ptbxl_age":
    age = pd.to_numeric(frame["age"], errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(age) & (age >= 0)
    a = age[keep]
    return keep, np.stack([a < 50, (a >= 50) & (a < 70), a >= 70], 1).astype(np.int8)
  if task == "ptbxl_signal":
    noise = _annotated(frame["static_noise"]) | _annotated(frame["burst_noise"])
    drift = _annotated(frame["baseline_drift"])
    return np.ones(len(frame), bool), np.stack([noise, drift], 1).astype(np.int8)
  if task == "ptbxl_device":
    device = frame["device"].fillna("").astype(str).str.strip()
    keep = device.ne("").to_numpy()
    family = device[keep].str.split().str[0].to_numpy()
    return keep, np.stack([family == c for c in CLASSES[task]], 1).astype(np.int8)
  raise ValueError(f"unknown attribute task {task!r}; known: {sorted(CLASSES)}")


def read_splits(task: str, path) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
  """{split: (frame, y)} of an attribute task read from the database table at `path`.

  Raises:
    FileNotFoundError: no table.
    ValueError: a column the task needs is missing, or a fold is not 1-10.
  """
  frame = pd.read_csv(path)
  missing = sorted(set(REQUIRED + COLUMNS[task]) - set(frame.columns))
  if missing:
    raise ValueError(f"{path}: columns {missing} missing (needed by {task})")
  fold = pd.to_numeric(frame["strat_fold"], errors="coerce")
  bad = ~fold.isin([f for folds in FOLDS.values() for f in folds])
  if bad.any():
    raise ValueError(f"{path}: strat_fold of {int(bad.sum())} rows is not 1-10 "
                     f"(first: {frame['strat_fold'][bad].iloc[0]!r})")
  keep, y = labels(task, frame)
  kept = frame[keep].reset_index(drop=True)
  kept_fold = fold[keep].to_numpy()
  return {split: (kept[np.isin(kept_fold, folds)].reset_index(drop=True),
                  y[np.isin(kept_fold, folds)]) for split, folds in FOLDS.items()}
