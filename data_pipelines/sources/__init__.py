"""Source readers, one module per on-disk layout, and the registry name -> source.

| name             | layout                                                                    |
|------------------|---------------------------------------------------------------------------|
| `ptbxl`          | PTB-XL: ptbxl_database.csv, scp_statements.csv, records100/ (records500/) |
| `cinc`           | PhysioNet/CinC 2020/2021: any tree of `.hea` + `.mat`, `#Age/#Sex/#Dx`     |
| `cpsc_mat`       | CPSC 2018 original: `.mat` files with an `ECG` struct, no header          |
| `ecg_arrhythmia` | PhysioNet ecg-arrhythmia (Chapman-Shaoxing-Ningbo): WFDBRecords/NN/NNN/   |
| `wfdb_dir`       | any folder tree of WFDB records                                           |
| `mimic`          | MIMIC-IV-ECG: record_list.csv, machine_measurements.csv, files/           |

Modules are imported on first use, so `import data_pipelines.sources` stays cheap.

For a single record (evaluation, embedding) use `read_canonical`:

  ecg = sources.read_canonical("ptbxl", root, "records100/00000/00001_lr",
                               signal.Config(fs=100))
  ecg.millivolts  # float32 [12, 1000], what the reader would give for this record
"""

from __future__ import annotations

import importlib
import os

from data_pipelines import signal
from data_pipelines.sources.base import LayoutError
from data_pipelines.sources.base import RawRecord
from data_pipelines.sources.base import RecordRef
from data_pipelines.sources.base import Rejected
from data_pipelines.sources.base import Source

_MODULES = {
    "ptbxl": "data_pipelines.sources.ptbxl",
    "cinc": "data_pipelines.sources.cinc",
    "cpsc_mat": "data_pipelines.sources.cpsc_mat",
    "ecg_arrhythmia": "data_pipelines.sources.cinc",
    "wfdb_dir": "data_pipelines.sources.wfdb_dir",
    "mimic": "data_pipelines.sources.mimic",
}
NAMES = tuple(_MODULES)

__all__ = ["LayoutError", "NAMES", "RawRecord", "RecordRef", "Rejected", "Source",
           "get_source", "read_canonical"]


def source_class(name: str) -> type[Source]:
  """The `Source` subclass registered as `name`."""
  if name not in _MODULES:
    raise ValueError(f"unknown source {name!r}; known: {', '.join(NAMES)}")
  module = importlib.import_module(_MODULES[name])
  return module.SOURCES[name]


def get_source(name: str, root: str | os.PathLike, **options) -> Source:
  """Opens `root` with the source `name`.

  Args:
    name: one of `NAMES`.
    root: the input folder.
    **options: source options (`ptbxl`: hr=True reads records500).

  Returns:
    The source; its constructor has checked the layout.

  Raises:
    LayoutError: `root` is missing or not in the source's layout.
    ValueError: unknown source name.
  """
  return source_class(name)(root, **options)


def read_canonical(name: str, root: str | os.PathLike, record: str, config, **options):
  """Reads one record and returns its canonical signal (what the converter stores).

  Args:
    name: source name.
    root: input root.
    record: record id (path relative to `root`, posix, no extension).
    config: a `data_pipelines.signal.Config`.
    **options: source options.

  Returns:
    `data_pipelines.signal.Canonical`; `.millivolts` is float32 [12, T].

  Raises:
    Rejected: the record cannot be read or canonicalised (message = reason).
  """
  source = get_source(name, root, **options)
  sig, leads, fs, _ = source.read_signal(record, max_seconds=config.seconds)
  return signal.canonicalize(sig, leads, fs, config)
