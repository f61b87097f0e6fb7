"""PTB-XL in its official PhysioNet layout.

  ptbxl_database.csv   one row per ECG: ecg_id, patient_id, report, scp_codes, strat_fold,
                       filename_lr (records100/NNNNN/NNNNN_lr), filename_hr (records500/...)
  scp_statements.csv   SCP code -> diagnostic class (NORM/MI/STTC/CD/HYP) ...
  records100/          100 Hz WFDB records (format 16, 1000/mV, leads I..V6 as AVR/AVL/AVF)
  records500/          500 Hz records, optional; read with the source option hr=True

Records are the CSV rows (sorted by ecg_id); a row whose files are missing is listed and then
rejected when read. The split hint is the paper's: strat_fold 1-8 train, 9 val, 10 test
(PTB-XL assigns folds per patient, so the hint is patient-disjoint). `scp_codes` is parsed
with `ast.literal_eval` (never `eval`): the CSV is untrusted input.
"""

from __future__ import annotations

import ast
import math

import pandas as pd

from data_pipelines.sources import wfdb_io
from data_pipelines.sources.base import LayoutError
from data_pipelines.sources.base import RecordRef
from data_pipelines.sources.base import Source
from data_pipelines.sources.base import resolve_record

_REQUIRED = ("ecg_id", "patient_id", "strat_fold", "filename_lr", "filename_hr", "report",
             "scp_codes")


def fold_split(strat_fold) -> str | None:
  """PTB-XL's recommended split of a strat_fold value: 1-8 train, 9 val, 10 test."""
  try:
    fold = int(float(strat_fold))
  except (TypeError, ValueError):
    return None
  return {9: "val", 10: "test"}.get(fold, "train" if 1 <= fold <= 8 else None)


def _parse_codes(text) -> dict:
  try:
    value = ast.literal_eval(str(text))
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return {}
  return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _patient(value, ecg_id) -> str:
  try:
    f = float(value)
    if math.isfinite(f):
      return str(int(f))
  except (TypeError, ValueError):
    pass
  # No patient id: the ECG is its own patient (it can then never leak across splits).
  return f"ecg{ecg_id}"


class PtbXl(Source):
  """PTB-XL reader. Options: hr (bool) reads records500 (filename_hr) instead of records100."""

  name = "ptbxl"
  has_reports = True

  @property
  def _column(self) -> str:
    return "filename_hr" if self.options.get("hr") else "filename_lr"

  def check_layout(self) -> None:
    csv = self.root / "ptbxl_database.csv"
    if not csv.is_file():
      raise LayoutError(f"{self.root} is not a PTB-XL folder: ptbxl_database.csv not found")
    header = pd.read_csv(csv, nrows=0).columns
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
      raise LayoutError(f"{csv} lacks the PTB-XL columns {missing}")
    folder = "records500" if self.options.get("hr") else "records100"
    if not (self.root / folder).is_dir():
      raise LayoutError(f"{self.root} has no {folder}/ folder"
                        + (" (drop the hr option to read records100)"
                           if self.options.get("hr") else ""))

  def _superclasses(self) -> dict[str, str]:
    path = self.root / "scp_statements.csv"
    if not path.is_file():
      return {}
    table = pd.read_csv(path, index_col=0)
    diag = table[table.get("diagnostic", pd.Series(dtype=float)) == 1]
    return {str(k): str(v) for k, v in diag["diagnostic_class"].dropna().items()}

  def list_records(self):
    db = pd.read_csv(self.root / "ptbxl_database.csv", dtype={"report": str},
                     keep_default_na=False, na_values={"patient_id": [""], "strat_fold": [""]})
    db = db.sort_values("ecg_id", kind="stable")
    superclass = self._superclasses()
    for row in db.itertuples(index=False):
      codes = _parse_codes(row.scp_codes)
      meta = {
          "ecg_id": int(row.ecg_id),
          "strat_fold": None if pd.isna(row.strat_fold) else int(row.strat_fold),
          "scp_codes": codes,
          "superclasses": sorted({superclass[c] for c in codes if c in superclass}),
      }
      yield RecordRef(record=str(getattr(row, self._column)),
                      patient=_patient(row.patient_id, row.ecg_id),
                      report=str(row.report or ""), split_hint=fold_split(row.strat_fold),
                      meta=meta)

  def read_signal(self, record, max_seconds=None):
    del max_seconds  # records of this layout are short: read whole
    return wfdb_io.read_wfdb(resolve_record(self.root, record), self.root)


SOURCES = {"ptbxl": PtbXl}
