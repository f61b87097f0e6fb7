"""MIMIC-IV-ECG (PhysioNet `mimic-iv-ecg` 1.0) in its release layout.

  record_list.csv           subject_id, study_id, file_name, ecg_time, path
                            (path = files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN, no extension)
  machine_measurements.csv  subject_id, study_id, cart_id, ecg_time, report_0 .. report_17,
                            bandwidth, filtering, rr_interval, p_onset, ... , t_axis
  files/                    the WFDB records (500 Hz, 10 s, 12 leads named I, II, III, aVR,
                            aVF, aVL, V1-V6: aVF comes before aVL, which the name mapping
                            handles)

A record is a row of record_list.csv (its `path`); its report is the machine report lines
report_0..report_17 of the same study_id, joined with ' ' by `reports.join_parts` (cleaning
happens later, as for every source). The patient is subject_id. Paths from the CSV are
untrusted and checked to stay inside the root.
"""

from __future__ import annotations

import pandas as pd

from data_pipelines import reports
from data_pipelines.sources import wfdb_io
from data_pipelines.sources.base import LayoutError
from data_pipelines.sources.base import RecordRef
from data_pipelines.sources.base import Source
from data_pipelines.sources.base import resolve_record

REPORT_COLUMNS = tuple(f"report_{i}" for i in range(18))


class Mimic(Source):
  """MIMIC-IV-ECG reader."""

  name = "mimic"
  has_reports = True

  def check_layout(self) -> None:
    for name, cols in (("record_list.csv", ("subject_id", "study_id", "path")),
                       ("machine_measurements.csv", ("study_id", "report_0"))):
      path = self.root / name
      if not path.is_file():
        raise LayoutError(f"{self.root} is not a MIMIC-IV-ECG folder: {name} not found")
      header = pd.read_csv(path, nrows=0).columns
      missing = [c for c in cols if c not in header]
      if missing:
        raise LayoutError(f"{path} lacks the MIMIC-IV-ECG columns {missing}")
    if not (self.root / "files").is_dir():
      raise LayoutError(f"{self.root} is not a MIMIC-IV-ECG folder: no files/")

  def list_records(self):
    records = pd.read_csv(self.root / "record_list.csv", dtype=str, keep_default_na=False)
    header = pd.read_csv(self.root / "machine_measurements.csv", nrows=0).columns
    columns = ["study_id"] + [c for c in REPORT_COLUMNS if c in header]
    text = pd.read_csv(self.root / "machine_measurements.csv", usecols=columns, dtype=str,
                       keep_default_na=False).drop_duplicates("study_id")
    merged = records.merge(text, on="study_id", how="left").sort_values("path", kind="stable")
    parts = columns[1:]
    for row in merged.itertuples(index=False):
      row = row._asdict()
      yield RecordRef(
          record=str(row["path"]).strip(),
          patient=str(row["subject_id"]),
          report=reports.join_parts(row.get(c) for c in parts),
          meta={"subject_id": str(row["subject_id"]), "study_id": str(row["study_id"]),
                "ecg_time": str(row.get("ecg_time", ""))})

  def read_signal(self, record, max_seconds=None):
    del max_seconds  # records of this layout are short: read whole
    return wfdb_io.read_wfdb(resolve_record(self.root, record), self.root)


SOURCES = {"mimic": Mimic}
