"""Source readers: cheap listing, reading, layout checks, untrusted ids, wfdb speed shim."""

import pathlib

import numpy as np
import pytest
import scipy.io
import wfdb

from cgdmer_jax.data import features
from data_pipelines import signal
from data_pipelines import sources
from data_pipelines.sources import base
from data_pipelines.sources import ptbxl
from data_pipelines.sources import wfdb_io


def _headers(root: pathlib.Path, limit_ptbxl: int | None = None):
  out = []
  for folder in ("cpsc2018", "csn", "cinc_other", "wfdb_samples"):
    out += sorted((root / folder).rglob("*.hea"))
  out += sorted((root / "ptbxl" / "records100").rglob("*.hea"))[:limit_ptbxl]
  return out


def _same_record(a, b):
  for field in ("record_name", "n_sig", "fs", "sig_len", "sig_name", "units", "adc_gain",
                "baseline", "fmt", "samps_per_frame", "comments", "counter_freq"):
    assert getattr(a, field, None) == getattr(b, field, None), field
  for x, y in zip(a.e_p_signal, b.e_p_signal):
    np.testing.assert_array_equal(x, y)


def _check_shim(paths):
  checked = 0
  for hea in paths:
    rec = str(hea)[:-4]
    try:
      plain = wfdb.rdrecord(rec, smooth_frames=False)
    except Exception as e:
      with pytest.raises(type(e)):
        with wfdb_io.fast_header_parsing():
          wfdb.rdrecord(rec, smooth_frames=False)
      continue
    with wfdb_io.fast_header_parsing():
      fast = wfdb.rdrecord(rec, smooth_frames=False)
    _same_record(plain, fast)
    checked += 1
  return checked


def test_fast_header_parsing_reads_identically(embedded_data):
  assert _check_shim(_headers(embedded_data)) > 250
  # The swap is scoped: wfdb's own tables are back afterwards.
  assert type(wfdb_io.wfdb_header.SIGNAL_SPECS).__name__ == "DataFrame"


def test_fast_header_parsing_on_shared(shared_data):
  assert _check_shim(_headers(shared_data, limit_ptbxl=200)) > 300


def test_listing(embedded_data):
  counts = {}
  for name, folder in [("ptbxl", "ptbxl"), ("cinc", "cpsc2018/wfdb"), ("cinc", "csn"),
                       ("cpsc_mat", "cpsc2018/original_mat"), ("ecg_arrhythmia", "csn"),
                       ("wfdb_dir", "wfdb_samples"), ("cinc", "cinc_other")]:
    counts[(name, folder)] = [r.record for r in
                              sources.get_source(name, embedded_data / folder).list_records()]
  assert len(counts[("ptbxl", "ptbxl")]) == 240
  assert counts[("cinc", "cpsc2018/wfdb")][:2] == ["A0001", "A0002"]
  assert len(counts[("cinc", "csn")]) == 14
  assert counts[("ecg_arrhythmia", "csn")] == ["WFDBRecords/01/010/JS00001",
                                               "WFDBRecords/01/010/JS00004"]
  assert counts[("cpsc_mat", "cpsc2018/original_mat")] == ["A1980", "A1982", "A1983"]
  assert counts[("cinc", "cinc_other")] == ["georgia/E07500", "georgia/E07501"]
  walk = counts[("wfdb_dir", "wfdb_samples")]
  # Multi-segment: the record, not its segments.
  assert "mimic2_multiseg_041s/041s" in walk and "mimic2_multiseg_041s/041s01" not in walk
  assert len(walk) == 6 + 4


def test_ptbxl_listing_fields(embedded_data):
  refs = list(sources.get_source("ptbxl", embedded_data / "ptbxl").list_records())
  by_fold = {}
  for r in refs:
    by_fold.setdefault(r.meta["strat_fold"], set()).add(r.split_hint)
    assert r.patient.isdigit() and r.record.startswith("records100/")
  assert by_fold[9] == {"val"} and by_fold[10] == {"test"}
  assert all(by_fold[f] == {"train"} for f in range(1, 9))
  assert sum(bool(r.report) for r in refs) == 240
  assert {"NORM", "MI", "STTC", "CD", "HYP"} <= {c for r in refs for c in r.meta["superclasses"]}


def test_scp_codes_never_evaluated():
  assert ptbxl._parse_codes("{'NORM': 100.0, 'SR': 0.0}") == {"NORM": 100.0, "SR": 0.0}
  assert ptbxl._parse_codes("__import__('os').system('false')") == {}
  assert ptbxl._parse_codes("[1, 2]") == {}


def test_read_ptbxl_matches_rdsamp(embedded_data):
  src = sources.get_source("ptbxl", embedded_data / "ptbxl")
  ref = next(iter(src.list_records()))
  raw = src.read(ref)
  sig, fields = wfdb.rdsamp(str(embedded_data / "ptbxl" / ref.record))
  np.testing.assert_array_equal(raw.signal, sig)
  assert raw.leads == tuple(fields["sig_name"]) and raw.fs == 100.0
  assert raw.report == ref.report and raw.meta["ecg_id"] == ref.meta["ecg_id"]
  # Reading by id looks the record up in the listing.
  assert src.read(ref.record).patient == ref.patient


def test_cinc_comments(embedded_data):
  src = sources.get_source("cinc", embedded_data / "cpsc2018" / "wfdb")
  blank = src.read("A0001")
  assert blank.meta["dx"] == [] and blank.meta["age"] == 74 and blank.meta["sex"] == "Male"
  assert src.read("A0689").meta["dx"] == ["164889003"]
  assert blank.report == "" and blank.patient == "A0001"


def test_cpsc_mat(embedded_data):
  root = embedded_data / "cpsc2018" / "original_mat"
  raw = sources.get_source("cpsc_mat", root).read("A1980")
  data = scipy.io.loadmat(root / "A1980.mat")["ECG"][0, 0]["data"]
  np.testing.assert_array_equal(raw.signal, data.T)
  assert raw.leads == features.LEADS and raw.fs == 500.0
  assert raw.meta["sex"] == "Male" and raw.meta["age"] == 52


def test_malformed_headers_rejected_with_reason(embedded_data):
  src = sources.get_source("wfdb_dir", embedded_data / "wfdb_samples")
  for name in ("E00009", "E00271", "E01137", "E03823"):
    with pytest.raises(sources.Rejected, match="HeaderSyntaxError"):
      src.read(f"edge_cases/georgia_malformed_header/{name}")


def test_units_and_rates_of_wfdb_samples(embedded_data):
  src = sources.get_source("wfdb_dir", embedded_data / "wfdb_samples")
  a103l = src.read("cinc2015_a103l/a103l")
  assert a103l.leads == ("II", "V") and "PLETH [NU]" in a103l.meta["dropped_channels"]
  flac = src.read("flac_mixedsignals/mixedsignals")
  # II, III, V at 4 samples per frame: kept at their own rate, not averaged.
  assert flac.leads == ("II", "III", "V") and flac.fs == pytest.approx(62.4725 * 4)
  assert flac.signal.shape == (57600, 3) and np.isnan(flac.signal).any()
  multiseg = src.read("mimic2_multiseg_041s/041s")
  assert multiseg.leads == ("III", "I", "V") and multiseg.signal.shape == (8000, 3)


@pytest.mark.parametrize("name,folder", [("ptbxl", "csn"), ("cinc", "ptbxl"),
                                         ("cpsc_mat", "cpsc2018/wfdb"),
                                         ("ecg_arrhythmia", "cpsc2018"), ("mimic", "ptbxl"),
                                         ("wfdb_dir", "merl_zeroshot"),
                                         ("cinc", "does_not_exist")])
def test_wrong_layout_is_a_clear_error(embedded_data, name, folder):
  with pytest.raises(sources.LayoutError):
    sources.get_source(name, embedded_data / folder)


def test_ptbxl_hr_needs_records500(embedded_data):
  with pytest.raises(sources.LayoutError, match="no records500"):
    sources.get_source("ptbxl", embedded_data / "ptbxl", hr=True)


@pytest.mark.parametrize("record", ["../ptbxl/records100/00000/00010_lr", "/etc/passwd",
                                    "a/../../b", "a\\..\\b", "x\x00y", ""])
def test_unsafe_record_ids_rejected(embedded_data, record):
  with pytest.raises(sources.Rejected, match="unsafe record path"):
    base.resolve_record(embedded_data / "wfdb_samples", record)


def test_read_canonical_single_record(embedded_data):
  ecg = sources.read_canonical("cinc", embedded_data / "csn", "cinc2021/JS03291",
                               signal.Config(fs=100))
  assert ecg.millivolts.shape == (12, 1000) and ecg.millivolts.dtype == np.float32
  assert ecg.lead_mask.all() and ecg.valid_len == 1000
