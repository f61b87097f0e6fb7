"""Patient-level, deterministic split assignment.

Rules (`assign`):

* `mode='auto'` (default): a record with a split hint from its source keeps it (PTB-XL:
  strat_fold 1-8 train, 9 val, 10 test); records without one are placed by patient hash.
* `mode='hash'`: every record is placed by patient hash, hints ignored.
* Patient hash: u = first 8 bytes of SHA-256(`salt` + ':' + patient id) / 2**64 in [0, 1);
  u < test_fraction -> test, u < test_fraction + val_fraction -> val, else train. Defaults
  0.1 / 0.1 (80/10/10). SHA-256 is stable across runs, machines and Python versions (unlike
  Python's `hash`, which is salted per process), and a patient's records always share u.
* Hints that put one patient in two splits (never in PTB-XL) are overruled so the patient
  goes to the most held-out split among them (test > val > train), keeping test clean.

Records are also ordered within a split by SHA-256 of the record id (`shard_order`), so
shards are random samples of the split and not, say, one recording period each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cgdmer_jax.data import features

_RANK = {"train": 0, "val": 1, "test": 2}


def _unit(text: str) -> float:
  digest = hashlib.sha256(text.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(patient: str, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
               salt: str = "cgdmer") -> str:
  """The split of a patient by stable hash.

  Args:
    patient: patient id.
    val_fraction: expected fraction of patients in val.
    test_fraction: expected fraction of patients in test.
    salt: changes the assignment as a whole (keep the default to reproduce a dataset).

  Returns:
    'train', 'val' or 'test'.
  """
  if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction > 1:
    raise ValueError(f"bad split fractions val={val_fraction} test={test_fraction}")
  u = _unit(f"{salt}:{patient}")
  if u < test_fraction:
    return "test"
  if u < test_fraction + val_fraction:
    return "val"
  return "train"


def assign(patients: Sequence[str], hints: Sequence[str | None], *, mode: str = "auto",
           val_fraction: float = 0.1, test_fraction: float = 0.1,
           salt: str = "cgdmer") -> list[str]:
  """The split of every record (rules in the module docstring).

  Args:
    patients: patient id per record.
    hints: source split hint per record (None where the source has none).
    mode: 'auto' (hints first) or 'hash'.
    val_fraction: hash fraction for val.
    test_fraction: hash fraction for test.
    salt: hash salt.

  Returns:
    One split name per record; no patient appears in two splits.
  """
  if mode not in ("auto", "hash"):
    raise ValueError(f"unknown split mode {mode!r}; use 'auto' or 'hash'")
  out = []
  for patient, hint in zip(patients, hints):
    if mode == "auto" and hint in features.SPLITS:
      out.append(hint)
    else:
      out.append(hash_split(patient, val_fraction=val_fraction,
                            test_fraction=test_fraction, salt=salt))
  most_held_out: dict[str, str] = {}
  for patient, split in zip(patients, out):
    best = most_held_out.get(patient)
    if best is None or _RANK[split] > _RANK[best]:
      most_held_out[patient] = split
  return [most_held_out[p] for p in patients]


def shard_order(record: str) -> bytes:
  """Sort key that spreads a split's records over its shards at random, reproducibly."""
  return hashlib.sha256(record.encode("utf-8")).digest()
