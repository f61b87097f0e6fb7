"""Seed groups: one recipe pretrained with several seeds, scored as the mean over its seeds.

`evaluate --group=NAME=A+B+C` (A, B, C: evaluated models, e.g. the workdirs of one recipe at
seeds 0, 1, 2) adds a row NAME to the tables. Each of its cells is

- the mean over the members of their macro AUCs, on the records every member has and the
  classes every member scored (so it can differ slightly from the mean of the members' own
  cells when a member scored a class the others could not);
- its 95 % interval: the percentile interval of that mean over record resamples, every
  member scored on the same draw (`bootstrap.resample_counts`, so it pairs with the other
  models' intervals). It holds the record-sampling noise of the seed mean; the seeds' own
  spread is shown beside it, as each member's AUC (`seed_aucs`).

A group's AUPRC is built the same way (`auprc`, `auprc_interval`, `seed_auprcs`) on the same
resamples; `positives` counts each class's positives among the group's common records.

A group can be named in `--compare` like a model: each resample then scores the mean over
A's seeds minus the mean over B's (`report.compare`, `bootstrap.paired_interval`); the
permutation test swaps whole records between two groups of as many seeds, member by member
(`permutation.paired_test`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cgdmer_jax.evaluators import auc as auc_lib
from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import cells
from cgdmer_jax.evaluators import stored


def parse_groups(specs: Sequence[str], models: Sequence[str]) -> dict[str, list[str]]:
  """`["NAME=A+B", ...]` -> {NAME: [A, B]}; every member must be one of `models`.

  Raises:
    ValueError: a malformed spec, a group of fewer than two distinct members, an unknown
      member, or a group name that repeats or is already a model's name.
  """
  groups: dict[str, list[str]] = {}
  for spec in specs:
    name, sep, rest = spec.partition("=")
    members = [m for m in rest.split("+") if m]
    if not sep or not name or not members:
      raise ValueError(f"--group takes NAME=MODEL+MODEL[+...], got {spec!r}")
    if name in groups or name in models:
      raise ValueError(f"--group name {name!r} is already a model or group name")
    if len(set(members)) != len(members) or len(members) < 2:
      raise ValueError(f"--group {name!r} needs two or more distinct models, got {members}")
    unknown = [m for m in members if m not in models]
    if unknown:
      raise ValueError(f"--group {name!r}: {unknown} are not among the evaluated models "
                       f"{list(models)}")
    groups[name] = members
  return groups


def score_sets(cell: dict) -> list[np.ndarray]:
  """The per-record scores behind a cell: one array for a model, one per seed for a group."""
  return list(cell["_score_sets"]) if "_score_sets" in cell else [cell["_scores"]]


def _cell(members: Sequence[dict], y: np.ndarray, idx: Sequence[np.ndarray],
          counts: np.ndarray, classes: Sequence[str] | None) -> dict:
  """The group cell of the members' cells (rows `idx[k]` of member k are the common rows)."""
  counted = {"records": int(len(y))}
  if classes is not None:
    counted["positives"] = cells.positives(y, classes)
  missing = [(c or {}).get("reason", "no cell") for c in members
             if c is None or c.get("auc") is None]
  if missing:
    return cells.no_cell(f"a seed has no number: {missing[0]}", seeds=len(members), **counted)
  cols = sorted(set.intersection(*(set(c["_columns"]) for c in members)))
  cols = [j for j in cols if 0 < y[:, j].sum() < len(y)]
  if len(cols) < auc_lib.MIN_CLASSES:
    return cells.no_cell(f"{len(cols)} class(es) scored by every seed", seeds=len(members),
                         **counted)
  sets = [np.asarray(s, np.float64)[i] for c, i in zip(members, idx) for s in score_sets(c)]
  y_cols, s_cols = y[:, cols], [s[:, cols] for s in sets]
  iv = bootstrap.mean_macro_interval(y_cols, s_cols, counts)
  pr = bootstrap.mean_macro_interval(y_cols, s_cols, counts, metric="auprc")
  return {"auc": float(np.mean(iv["member_aucs"])), "interval": iv["interval"],
          "seed_aucs": iv["member_aucs"], "auprc": float(np.mean(pr["member_aucs"])),
          "auprc_interval": pr["interval"], "seed_auprcs": pr["member_aucs"],
          "seeds": len(sets), "classes_scored": len(cols), "resamples": iv["resamples"],
          **counted, "_score_sets": sets, "_columns": cols}


def _map_cells(entries: Sequence[dict], fn) -> dict:
  """A task entry whose cells are `fn([member cells])`, in the members' cell layout."""
  first = entries[0]
  out: dict = {}
  if "zero_shot" in first:
    out["zero_shot"] = fn([e.get("zero_shot") for e in entries])
  if "linear_probe" in first:
    out["linear_probe"] = {
        probe: {feat: {frac: fn([e.get("linear_probe", {}).get(probe, {}).get(feat, {})
                                 .get(frac) for e in entries])
                       for frac in by_frac}
                for feat, by_frac in by_feat.items()}
        for probe, by_feat in first["linear_probe"].items()}
  return out


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
  """Where each of `wanted` sits in `rows` (all of them are there)."""
  at = {r: i for i, r in enumerate(np.asarray(rows).tolist())}
  return np.asarray([at[r] for r in np.asarray(wanted).tolist()], np.int64)


def group_result(name: str, members: Sequence[dict], resamples: int = bootstrap.NUM_RESAMPLES,
                 seed: int = 0) -> dict:
  """The results dict of a seed group (same layout as `runner.evaluate_encoder`'s).

  Args:
    name: the group's row name.
    members: the members' results (with their private scores), same split and tasks.
    resamples, seed: bootstrap settings (those of the members).
  """
  out = {"model": name, "split": members[0].get("split"), "group": [m["model"] for m in members],
         "tasks": {}}
  for task in members[0]["tasks"]:
    entries = [m["tasks"].get(task, {}) for m in members]
    if any("_rows" not in e for e in entries):
      out["tasks"][task] = {"reason": "a seed has no scored records on this task"}
      continue
    common = entries[0]["_rows"]
    for e in entries[1:]:
      common = np.intersect1d(common, e["_rows"])
    if not len(common):
      out["tasks"][task] = {"reason": "the seeds share no scored record"}
      continue
    idx = [_positions(e["_rows"], common) for e in entries]
    y = np.asarray(entries[0]["_y"])[idx[0]]
    for m, e, i in zip(members[1:], entries[1:], idx[1:]):
      stored.check_same_labels(members[0]["model"], y, m["model"], np.asarray(e["_y"])[i], task)
    counts = bootstrap.resample_counts(len(common), resamples, seed)
    entry = {"_y": y, "_rows": common, "records": int(len(common))}
    classes = entries[0].get("classes")  # absent in hand-built results
    if classes is not None:
      entry["classes"] = list(classes)
    entry.update(_map_cells(entries, lambda cs: _cell(cs, y, idx, counts, classes)))
    out["tasks"][task] = entry
  return out
