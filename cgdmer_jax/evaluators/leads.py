"""Reduced-lead evaluation: a set of leads by name, the others hidden as an unrecorded lead.

Wearables and monitors record 1, 2, 3 or 6 of the 12 standard leads. The model takes any
subset: a lead whose `lead_mask` entry is False contributes no token (`patching.token_valid`),
which is how it sees a lead a recording lacks during pretraining. A lead set is therefore
applied to canonical batches by clearing the mask of every other lead and zeroing its samples
(so no value of a hidden lead can reach the model by any path).

Specs, case-insensitive: lead names joined by commas (`I`, `I,II`, `V1,V2,aVF`, any subset
in any order, kept in the canonical order), `all` (the twelve) or `limb` (I, II, III, aVR,
aVL, aVF).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cgdmer_jax.data import features

ALL = tuple(features.LEADS)
NAMED = {"all": ALL, "limb": ALL[:6]}
_BY_LOWER = {name.lower(): name for name in ALL}


def parse(spec: str | Sequence[str]) -> tuple[str, ...]:
  """A lead-set spec -> lead names in canonical order; ValueError on an unknown or empty set.

  Args:
    spec: "I,II", "all", "limb", or a sequence of names.
  """
  parts = spec.split(",") if isinstance(spec, str) else list(spec)
  parts = [p.strip() for p in parts if p.strip()]
  if len(parts) == 1 and parts[0].lower() in NAMED:
    return NAMED[parts[0].lower()]
  unknown = [p for p in parts if p.lower() not in _BY_LOWER]
  if unknown or not parts:
    raise ValueError(f"unknown lead set {spec!r}: name leads from {', '.join(ALL)} (comma "
                     f"separated), or 'all' / 'limb'")
  chosen = {_BY_LOWER[p.lower()] for p in parts}
  return tuple(name for name in ALL if name in chosen)


def keep_mask(names: Sequence[str]) -> np.ndarray:
  """bool [12]: True for the leads in `names` (canonical order)."""
  names = parse(names)
  return np.asarray([name in names for name in ALL], bool)


def is_all(names: Sequence[str]) -> bool:
  return tuple(parse(names)) == ALL


def tag(names: Sequence[str]) -> str:
  """Short name of a lead set for labels and file names: 'all', 'limb' or 'I-II-V1'."""
  names = parse(names)
  for key, value in NAMED.items():
    if names == value:
      return key
  return "-".join(names)


def apply(ecg_NxCxT: np.ndarray, lead_mask_NxC: np.ndarray, keep_C: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
  """Hides every lead outside `keep_C`: its mask cleared, its samples zeroed.

  Args:
    ecg_NxCxT: canonical ECGs (12 leads in `features.LEADS` order).
    lead_mask_NxC: recorded leads.
    keep_C: bool [12], the lead set (`keep_mask`).

  Returns:
    (ecg, lead_mask), new arrays; the inputs are not modified.
  """
  keep_C = np.asarray(keep_C, bool)
  if keep_C.shape != (len(ALL),):
    raise ValueError(f"a lead set is a bool vector over the {len(ALL)} leads, got shape "
                     f"{keep_C.shape}")
  mask = np.asarray(lead_mask_NxC, bool) & keep_C[None, :]
  ecg = np.where(mask[:, :, None], np.asarray(ecg_NxCxT), 0).astype(np.asarray(ecg_NxCxT).dtype)
  return ecg, mask


def missing_reason(lead_mask_C: np.ndarray, keep_C: np.ndarray) -> str | None:
  """Why a record cannot be scored on a lead set (none of its leads recorded), else None."""
  if np.any(np.asarray(lead_mask_C, bool) & np.asarray(keep_C, bool)):
    return None
  wanted = [n for n, k in zip(ALL, keep_C) if k]
  return f"none of the leads {','.join(wanted)} is recorded"
