"""CPSC 2018 (ICBEB) in its original format: one MATLAB `.mat` per record, no WFDB header.

`scipy.io.loadmat(f)['ECG']` is a 1x1 struct with `sex` ('Male'/'Female'), `age` and `data`
(12 x N float, millivolts, 500 Hz, lead order I, II, III, aVR, aVL, aVF, V1-V6; the order is
fixed by the challenge, the file names no leads). Every `.mat` without a `.hea` beside it is
a record (a `.mat` with a header is a WFDB signal file, read by the `cinc` source). loadmat
parses MAT v5 data only; it never unpickles or runs code. `data` must be a real numeric
12 x N matrix (a complex, text or cell `data` is rejected naming its type, never cast).
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.io

from cgdmer_jax.data import features
from data_pipelines.sources.base import LayoutError
from data_pipelines.sources.base import RecordRef
from data_pipelines.sources.base import Rejected
from data_pipelines.sources.base import Source
from data_pipelines.sources.base import resolve_record
from data_pipelines.sources.base import walk

FS = 500.0


def _scalar(value):
  """The Python value inside loadmat's nested object arrays ([['Male']] -> 'Male')."""
  while isinstance(value, np.ndarray) and value.size == 1:
    value = value.reshape(()).item() if value.dtype != object else value.reshape(-1)[0]
  return value.item() if isinstance(value, np.generic) else value


class CpscMat(Source):
  """Original CPSC 2018 `.mat` records (TrainingSet1-3, or any folder of them)."""

  name = "cpsc_mat"

  def _records(self):
    for record in walk(self.root, ".mat"):
      if not (self.root / f"{record}.hea").exists():
        yield record

  def check_layout(self) -> None:
    if next(iter(itertools.islice(self._records(), 1)), None) is None:
      raise LayoutError(f"{self.root} holds no header-less .mat file (the original CPSC "
                        "2018 format); WFDB .hea + .mat folders are --source=cinc")

  def list_records(self):
    for record in self._records():
      yield RecordRef(record=record, patient=record)

  def read_signal(self, record, max_seconds=None):
    del max_seconds  # records of this layout are short: read whole
    path = resolve_record(self.root, record, ".mat")
    try:
      mat = scipy.io.loadmat(path)
    except Exception as e:
      raise Rejected(f"unreadable .mat ({type(e).__name__}: {e})") from e
    if "ECG" not in mat:
      raise Rejected("not an original CPSC .mat (no 'ECG' struct)")
    struct = mat["ECG"].reshape(-1)[0]
    names = struct.dtype.names or ()
    if "data" not in names:
      raise Rejected("the 'ECG' struct has no 'data' field")
    data = np.asarray(struct["data"])
    if data.dtype.kind not in "iuf":  # complex, text, cells...: no real millivolts
      raise Rejected(f"'ECG.data' holds {data.dtype} values, expected real numbers")
    if data.ndim != 2 or data.shape[0] != features.NUM_LEADS:
      raise Rejected(f"'ECG.data' has shape {data.shape}, expected (12, N)")
    data = data.astype(np.float64)
    meta = {"sex": str(_scalar(struct["sex"])) if "sex" in names else "",
            "age": None}
    if "age" in names:
      age = _scalar(struct["age"])
      meta["age"] = int(age) if isinstance(age, (int, float)) and np.isfinite(age) else None
    return data.T, features.LEADS, FS, meta


SOURCES = {"cpsc_mat": CpscMat}
