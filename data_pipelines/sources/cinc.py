"""PhysioNet/CinC Challenge 2020/2021 records and the PhysioNet `ecg-arrhythmia` release.

`cinc`: any folder tree of WFDB records whose signal file is a WFDB `.mat` (format 16+24),
e.g. CinC 2021 `training/<database>/g1/A0001.{hea,mat}`, or a flat folder of them. The
header comments `#Age`, `#Sex`, `#Dx` (comma-separated SNOMED-CT codes; blank in some copies)
go into meta as 'age', 'sex', 'dx'. `#Dx` are labels, not reports: the report is ''.
The `.mat` must hold the 'val' matrix its header declares (type, signals x samples, byte
offset; `wfdb_files.check_signal_files`), else the record is rejected naming the mismatch.

`ecg_arrhythmia`: Chapman-Shaoxing-Ningbo as released on PhysioNet
(`WFDBRecords/NN/NNN/JSnnnnn.{hea,mat}`, same header comments); only the records under
`WFDBRecords/` are listed.

CinC releases carry no patient ids, so every record is its own patient (the split is then
per record; Chapman-Shaoxing-Ningbo has one ECG per patient).
"""

from __future__ import annotations

import itertools

from data_pipelines.sources import wfdb_io
from data_pipelines.sources.base import LayoutError
from data_pipelines.sources.base import RecordRef
from data_pipelines.sources.base import Source
from data_pipelines.sources.base import resolve_record
from data_pipelines.sources.base import walk


class Cinc(Source):
  """CinC 2020/2021 `.hea` + `.mat` records anywhere under the root."""

  name = "cinc"
  _under = ""

  def _headers(self):
    return walk(self.root, ".hea", self._under)

  def check_layout(self) -> None:
    for record in itertools.islice(self._headers(), 50):
      if resolve_record(self.root, record, ".mat").is_file():
        return
    raise LayoutError(f"{self.root}/{self._under} holds no CinC-style record (a .hea with a "
                      "WFDB .mat signal file beside it); use --source=wfdb_dir for other "
                      "WFDB folders")

  def list_records(self):
    for record in self._headers():
      yield RecordRef(record=record, patient=record)

  def read_signal(self, record, max_seconds=None):
    del max_seconds  # records of this layout are short: read whole
    sig, leads, fs, meta = wfdb_io.read_wfdb(resolve_record(self.root, record), self.root)
    meta.update(wfdb_io.parse_cinc_comments(meta["comments"]))
    return sig, leads, fs, meta


class EcgArrhythmia(Cinc):
  """PhysioNet ecg-arrhythmia (Chapman-Shaoxing-Ningbo): records under WFDBRecords/."""

  name = "ecg_arrhythmia"
  _under = "WFDBRecords"

  def check_layout(self) -> None:
    if not (self.root / self._under).is_dir():
      raise LayoutError(f"{self.root} is not an ecg-arrhythmia folder: no WFDBRecords/")
    super().check_layout()


SOURCES = {"cinc": Cinc, "ecg_arrhythmia": EcgArrhythmia}
