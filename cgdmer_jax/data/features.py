"""The TFRecord record schema: one example per ECG.

This module is the single source of truth for what a converted dataset holds. The writer
(`data_pipelines.write`) and the reader (`cgdmer_jax.data.reader`) both build their TFDS
feature description from `tfds_features`, so the two can never disagree.

| feature      | dtype  | shape                  | meaning                                        |
|--------------|--------|------------------------|------------------------------------------------|
| record_id    | string | ()                     | record path relative to the input root         |
| patient_id   | string | ()                     | patient; decides the split                     |
| source       | string | ()                     | source reader name (ptbxl, cinc, mimic, ...)   |
| ecg          | int16  | (12, num_samples)      | lead-major, 1 uV per unit (mV = value / 1000)  |
| valid_len    | int64  | ()                     | samples before zero padding                    |
| lead_mask    | int64  | (12,)                  | 1 where the lead was recorded                  |
| fs           | int64  | ()                     | sampling rate after resampling (Hz)            |
| report       | string | ()                     | cleaned report text ('' when none)             |
| report_ids   | int64  | (max_report_len,)      | token ids (SentencePiece, or a checkpoint's    |
|              |        |                        | WordPiece: build_info's special_ids), padded   |
| report_len   | int64  | ()                     | ids before padding (0 when no report)          |

`ecg` is stored as raw little-endian bytes (TFDS `Encoding.BYTES`), 2 bytes per sample:
a 10 s, 500 Hz, 12-lead ECG is 120 kB, so MIMIC-IV-ECG (800k records) is about 96 GB.
"""

from __future__ import annotations

import numpy as np

# TensorFlow Datasets is imported inside `tfds_features` only: the configs, the model code, the
# step benchmark and the GPU check import this module in processes without TensorFlow.

# Canonical lead order; every stored ECG is in this order.
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NUM_LEADS = len(LEADS)

# Storage quantisation: int16 counts of 1 uV. Range +-32.767 mV; larger values are clipped
# (and counted by the converter).
UV_PER_UNIT = 1.0
UNITS_PER_MV = 1000.0
INT16_MAX = 32767

# SentencePiece special ids, fixed for every tokenizer this project trains.
PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
MASK_ID = 4
NUM_SPECIAL = 5
MASK_PIECE = "<mask>"

# Split names written by the converter.
SPLITS = ("train", "val", "test")

# Name under which the converted dataset is registered in its TFDS metadata.
DATASET_NAME = "cgdmer_ecg"

# Side files written next to the shards.
TOKENIZER_FILE = "tokenizer.model"
# A pretrained checkpoint's WordPiece tokenizer (`--tokenizer=hf:DIR`, data_pipelines.wordpiece).
WORDPIECE_FILE = "wordpiece.json"
TOKENIZER_FILES = (TOKENIZER_FILE, WORDPIECE_FILE)
MANIFEST_FILE = "manifest.csv"
BUILD_INFO_FILE = "build_info.json"


def tfds_features(num_samples: int, max_report_len: int):
  """The TFDS FeaturesDict of one record.

  Args:
    num_samples: stored samples per lead (fs * seconds).
    max_report_len: length of the padded `report_ids`.

  Returns:
    A `tfds.features.FeaturesDict`.
  """
  import tensorflow_datasets as tfds

  f = tfds.features
  return f.FeaturesDict({
      "record_id": f.Text(),
      "patient_id": f.Text(),
      "source": f.Text(),
      "ecg": f.Tensor(shape=(NUM_LEADS, num_samples), dtype=np.int16,
                      encoding=f.Encoding.BYTES),
      "valid_len": f.Scalar(dtype=np.int64),
      "lead_mask": f.Tensor(shape=(NUM_LEADS,), dtype=np.int64),
      "fs": f.Scalar(dtype=np.int64),
      "report": f.Text(),
      "report_ids": f.Tensor(shape=(max_report_len,), dtype=np.int64),
      "report_len": f.Scalar(dtype=np.int64),
  })
