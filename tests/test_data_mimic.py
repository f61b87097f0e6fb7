"""MIMIC-IV-ECG source on a fixture: real PTB-XL records re-laid in the MIMIC-IV-ECG layout.

MIMIC-IV-ECG is not available here, so the fixture rewrites real records (sample values
unchanged, leads re-ordered to MIMIC's I, II, III, aVR, aVF, aVL, V1-V6) under
files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN with the release's CSV column names, and splits each
report over report_0..report_k as the machine measurements table does.
"""

import csv

import numpy as np
import pytest
import tensorflow_datasets as tfds
import wfdb

from cgdmer_jax.data import features
from data_pipelines import reports
from data_pipelines import signal
from data_pipelines import sources
from data_pipelines import tokenizer
from data_pipelines import write

MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
MEASUREMENT_COLUMNS = (["subject_id", "study_id", "cart_id", "ecg_time"]
                       + [f"report_{i}" for i in range(18)]
                       + ["bandwidth", "filtering", "rr_interval", "p_onset", "p_end",
                          "qrs_onset", "qrs_end", "t_end", "p_axis", "qrs_axis", "t_axis"])


@pytest.fixture(scope="module")
def mimic(embedded_data, tmp_path_factory):
  """(root, {path: (ptbxl source record, subject, joined raw report)})."""
  root = tmp_path_factory.mktemp("mimic") / "mimic-iv-ecg"
  db = list(csv.DictReader(open(embedded_data / "ptbxl" / "ptbxl_database.csv",
                                encoding="utf-8")))
  by_patient = {}
  for row in db:
    by_patient.setdefault(row["patient_id"], []).append(row)
  # Patients with several ECGs first (patient-level splits), then single ones: 30 records.
  rows = [r for p in sorted(by_patient, key=lambda p: -len(by_patient[p])) for r in
          by_patient[p]][:30]
  records, measurements, truth = [], [], {}
  for i, row in enumerate(rows):
    subject = str(10_000_000 + int(float(row["patient_id"])))
    study = str(40_000_000 + int(row["ecg_id"]))
    rel = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
    src = wfdb.rdrecord(str(embedded_data / "ptbxl" / row["filename_lr"]), physical=False)
    order = [src.sig_name.index(n.upper() if n.startswith("a") else n) for n in MIMIC_LEADS]
    (root / rel).parent.mkdir(parents=True)
    wfdb.wrsamp(study, fs=src.fs, units=["mV"] * 12, sig_name=MIMIC_LEADS,
                d_signal=src.d_signal[:, order], fmt=["16"] * 12,
                adc_gain=[src.adc_gain[k] for k in order],
                baseline=[src.baseline[k] for k in order], write_dir=str((root / rel).parent))
    parts = [p.strip() for p in row["report"].split(". ") if p.strip()]
    if i % 3 == 0:
      parts = ["*** Unconfirmed report ***"] + parts + ["--- Data quality check ---"]
    records.append({"subject_id": subject, "study_id": study, "file_name": study,
                    "ecg_time": "2180-07-23 08:44:00", "path": rel})
    if i != 5:  # study 5 has no machine measurements row: report ''
      measurements.append({"subject_id": subject, "study_id": study, "cart_id": "6848",
                           "ecg_time": "2180-07-23 08:44:00",
                           **{f"report_{k}": p for k, p in enumerate(parts)}})
    truth[rel] = (row["filename_lr"], subject, " ".join(parts) if i != 5 else "")
  # Untrusted paths: one escaping the root, one missing on disk.
  records.append({"subject_id": "19999999", "study_id": "49999998", "file_name": "x",
                  "ecg_time": "", "path": "../../../etc/passwd"})
  records.append({"subject_id": "19999999", "study_id": "49999999", "file_name": "x",
                  "ecg_time": "", "path": "files/p1999/p19999999/s49999999/49999999"})
  for name, cols, data in (("record_list.csv", list(records[0]), records),
                           ("machine_measurements.csv", MEASUREMENT_COLUMNS, measurements)):
    with open(root / name, "w", newline="", encoding="utf-8") as f:
      w = csv.DictWriter(f, fieldnames=cols)
      w.writeheader()
      w.writerows(data)
  return root, truth


def test_listing(mimic):
  root, truth = mimic
  refs = {r.record: r for r in sources.get_source("mimic", root).list_records()}
  assert len(refs) == len(truth) + 2
  for rel, (_, subject, report) in truth.items():
    assert refs[rel].patient == subject and refs[rel].report == report
    assert refs[rel].split_hint is None


@pytest.fixture(scope="module")
def built(mimic, tmp_path_factory):
  root, _ = mimic
  out = tmp_path_factory.mktemp("mimic_out") / "ds"
  write.build(write.BuildConfig(source="mimic", input=str(root), output=str(out),
                                signal=signal.Config(fs=100), vocab_size=200,
                                val_fraction=0.3, test_fraction=0.3, workers=1,
                                progress=False))
  with open(out / features.MANIFEST_FILE, newline="", encoding="utf-8") as f:
    return out, list(csv.DictReader(f))


def test_round_trip_and_reports(embedded_data, mimic, built):
  root, truth = mimic
  out, _ = built
  tok = tokenizer.Tokenizer.from_file(out / features.TOKENIZER_FILE)
  builder = tfds.builder_from_directory(str(out))
  seen = 0
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      rel = ex["record_id"].decode()
      ptbxl_record, subject, report = truth[rel]
      sig, _ = wfdb.rdsamp(str(embedded_data / "ptbxl" / ptbxl_record))
      # PTB-XL stores the canonical order; MIMIC's aVF/aVL swap must have been undone.
      np.testing.assert_array_equal(ex["ecg"], np.rint(sig.T * 1000).astype(np.int16))
      assert ex["patient_id"].decode() == subject
      clean = reports.clean_report(report)
      assert ex["report"].decode() == clean and "***" not in clean
      ids, n_ids = tok.encode(clean, 128)
      np.testing.assert_array_equal(ex["report_ids"], ids)
      assert ex["report_len"] == n_ids and (n_ids == 0) == (clean == "")
      if features.UNK_ID not in ids:  # characters only val/test reports have decode as unk
        decoded = tok.decode(ids)
        assert decoded == clean if n_ids < 128 else clean.startswith(decoded)
      seen += 1
  assert seen == len(truth)


def test_untrusted_and_missing_paths_rejected(built):
  _, rows = built
  reasons = {r["record"]: r["reason"] for r in rows if r["status"] == "rejected"}
  assert set(reasons) == {"../../../etc/passwd", "files/p1999/p19999999/s49999999/49999999"}
  assert "unsafe record path" in reasons["../../../etc/passwd"]
  assert "unreadable WFDB record" in reasons["files/p1999/p19999999/s49999999/49999999"]


def test_patients_never_span_splits(built):
  _, rows = built
  splits = {}
  for r in rows:
    splits.setdefault(r["patient"], set()).add(r["split"])
  assert all(len(s) == 1 for s in splits.values())
  assert {r["split"] for r in rows} == {"train", "val", "test"}
  assert max(sum(r["patient"] == p for r in rows) for p in splits) >= 2
