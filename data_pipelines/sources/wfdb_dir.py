"""Any folder tree of WFDB records (MIT-BIH, PTB, MIMIC waveforms, test samples...).

A record is a `.hea` file, except the segment headers of a multi-segment record (those named
on the lines of a `name/num_segments` header, including a variable layout's `_layout`
header): the multi-segment record is read as one record by `wfdb.rdrecord`. Header comments
go into meta['comments']. No patient ids: every record is its own patient. Headers wfdb
cannot parse are listed and then rejected with wfdb's error as the reason; so are headers
with a field that does not parse strictly or signal files that do not match their header
(`wfdb_checks.check_header`, every segment of a multi-segment record included). Only the first
`seconds` (the converter's window) of a record are read: such folders hold hours-long
Holter and ICU recordings.
"""

from __future__ import annotations

import itertools

from data_pipelines.sources import wfdb_io
from data_pipelines.sources.base import LayoutError
from data_pipelines.sources.base import RecordRef
from data_pipelines.sources.base import Source
from data_pipelines.sources.base import resolve_record
from data_pipelines.sources.base import walk


class WfdbDir(Source):
  """Generic walk of a folder of WFDB records."""

  name = "wfdb_dir"

  def check_layout(self) -> None:
    if next(iter(itertools.islice(walk(self.root, ".hea"), 1)), None) is None:
      raise LayoutError(f"{self.root} holds no WFDB header (.hea) file")

  def list_records(self):
    records = list(walk(self.root, ".hea"))
    children = wfdb_io.segment_children(self.root, records)
    for record in records:
      if record not in children:
        yield RecordRef(record=record, patient=record)

  def read_signal(self, record, max_seconds=None):
    # Holter and ICU recordings can last hours: read only the part that will be kept.
    return wfdb_io.read_wfdb(resolve_record(self.root, record), self.root,
                             max_seconds=max_seconds)


SOURCES = {"wfdb_dir": WfdbDir}
