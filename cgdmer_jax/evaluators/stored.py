"""A model's evaluation, stored and loaded again: per-record scores beside `results.json`.

`runner.evaluate_models` writes, for every evaluated model, `<out>/<model>/scores.npz`: the
labels, table rows and per-record scores behind each of its cells (the private `_` keys of
its results, which `results.json` leaves out). `evaluate --scored=DIR` reads such a folder
back as an evaluated model: it takes part in `--group` and `--compare` exactly as if it had
been scored in the same call, without its checkpoint and without scoring it again. So seeds
trained weeks apart, or on machines that no longer hold the checkpoints, are grouped and
paired on the same records and resamples.

The arrays are read with `allow_pickle=False`; a folder whose arrays do not match its
`results.json`, or that was scored on another split or with other bootstrap settings than
the current call, is refused with the reason. A folder written before cells carried AUPRC is
upgraded on loading: each cell's AUPRC, interval (on the stored resamples) and per-class
positives are computed from its stored scores, as `cells.score` computes them now.
"""

from __future__ import annotations

import json

import numpy as np
from etils import epath

from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import cells

SCORES_FILE = "scores.npz"
RESULTS_FILE = "results.json"
_SEP = "/"
# Private keys of a model's results and how they are restored (`runner.evaluate_encoder`).
_ARRAYS = ("_y", "_rows", "_scores")
_LISTS = ("_columns",)


def _private(obj, path=()):
  """(path, value) of every private array or index list in a results dict."""
  if not isinstance(obj, dict):
    return
  for key, value in obj.items():
    key = str(key)
    if key in _ARRAYS or key in _LISTS:
      bad = [k for k in path if _SEP in k]
      if bad:
        raise ValueError(f"results key {bad[0]!r} contains {_SEP!r}; its scores cannot be "
                         f"stored")
      yield path + (key,), value
    elif not key.startswith("_"):
      yield from _private(value, path + (key,))


def save(out_dir: epath.Path, results: dict) -> epath.Path | None:
  """Writes `out_dir/scores.npz` for a model's results; a seed group (built from its
  members' scores) writes none. Returns the path written, or None."""
  if "group" in results:
    return None
  arrays = {}
  for path, value in _private(results):
    kind = np.int64 if path[-1] in _LISTS or path[-1] == "_rows" else None
    arrays[_SEP.join(path)] = np.asarray(value, dtype=kind)
  out = epath.Path(out_dir) / SCORES_FILE
  with out.open("wb") as f:
    np.savez_compressed(f, **arrays)
  return out


def _put(results: dict, path: tuple[str, ...], value, where: epath.Path) -> None:
  node = results
  for key in path[:-1]:
    node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
      raise ValueError(f"{where}: array {_SEP.join(path)!r} has no cell in {RESULTS_FILE}")
  node[path[-1]] = value.tolist() if path[-1] in _LISTS else value


def _cells(entry: dict) -> list[tuple[str, dict]]:
  """(label, cell) of every cell of a task entry."""
  out = [("zero-shot", entry.get("zero_shot"))]
  for probe, by_feat in (entry.get("linear_probe") or {}).items():
    for feat, by_frac in by_feat.items():
      out += [(f"{probe} {feat} {frac}%", c) for frac, c in by_frac.items()]
  return [(label, c) for label, c in out if isinstance(c, dict)]


def _missing_scores(results: dict) -> list[str]:
  """Cells with a number but no per-record scores, and scored tasks without labels/rows."""
  missing = []
  for task, entry in results.get("tasks", {}).items():
    if not isinstance(entry, dict) or "reason" in entry:
      continue
    if "_y" not in entry or "_rows" not in entry:
      missing.append(f"{task}: labels or rows")
    missing += [f"{task} {label}" for label, c in _cells(entry)
                if c.get("auc") is not None and ("_scores" not in c or "_columns" not in c)]
  return missing


def _add_auprc(results: dict, resamples: int | None, seed: int | None) -> None:
  """Gives the cells of results stored before AUPRC existed their AUPRC keys, `records` and
  `positives` (`cells.score`), from their stored scores on the stored resamples."""
  stored_bootstrap = results.get("bootstrap") or {}
  num = stored_bootstrap.get("resamples") or resamples or bootstrap.NUM_RESAMPLES
  seed = stored_bootstrap.get("seed", seed or 0)
  for entry in results["tasks"].values():
    if not isinstance(entry, dict) or "_y" not in entry:
      continue
    y = np.asarray(entry["_y"])
    counts = None
    for _, cell in _cells(entry):
      cell.setdefault("records", int(len(y)))
      if entry.get("classes") is not None:
        cell.setdefault("positives", cells.positives(y, entry["classes"]))
      if cell.get("auc") is None or "auprc" in cell:
        continue
      # Per-class names of the scored columns: those of its per-class AUCs, in column order.
      names = [str(j) for j in range(y.shape[1])]
      for j, name in zip(cell["_columns"], cell.get("per_class") or {}):
        names[j] = name
      if counts is None:
        counts = bootstrap.resample_counts(len(y), num, seed)
      cell.update(cells.auprc_keys(y, cell["_scores"], names, cell["_columns"], counts))


def load(folder, *, split: str | None = None, resamples: int | None = None,
         seed: int | None = None) -> dict:
  """A stored model's results with its per-record scores, as `runner.evaluate_encoder`
  returns them.

  Args:
    folder: `<out>/<model>/` of an earlier evaluation (holds results.json and scores.npz).
    split, resamples, seed: when given, the stored evaluation must have used them.

  Raises:
    FileNotFoundError: the folder or one of its two files is missing.
    ValueError: a seed group's folder, unreadable or inconsistent files, or another split or
      other bootstrap settings than asked for.
  """
  folder = epath.Path(folder)
  res_path, npz_path = folder / RESULTS_FILE, folder / SCORES_FILE
  for p in (res_path, npz_path):
    if not p.is_file():
      raise FileNotFoundError(f"--scored {folder}: no {p.name} (a model folder of an earlier "
                              f"`evaluate --out`, which writes both files)")
  try:
    results = json.loads(res_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"--scored {folder}: {RESULTS_FILE} is not valid JSON ({e})") from None
  if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
    raise ValueError(f"--scored {folder}: {RESULTS_FILE} holds no model results")
  if "group" in results:
    raise ValueError(f"--scored {folder}: a seed group's folder; pass its members' folders "
                     f"and --group again")
  stored_bootstrap = results.get("bootstrap") or {}
  for what, want, got in (("split", split, results.get("split")),
                          ("bootstrap resamples", resamples, stored_bootstrap.get("resamples")),
                          ("bootstrap seed", seed, stored_bootstrap.get("seed"))):
    if want is not None and got != want:
      raise ValueError(f"--scored {folder}: scored with {what} {got!r}, this evaluation uses "
                       f"{want!r}")
  try:
    with npz_path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
      for key in npz.files:
        _put(results, tuple(key.split(_SEP)), npz[key], folder)
  except (OSError, ValueError) as e:
    raise ValueError(f"--scored {folder}: {SCORES_FILE} cannot be read ({e})") from None
  missing = _missing_scores(results)
  if missing:
    raise ValueError(f"--scored {folder}: {SCORES_FILE} lacks the scores of "
                     f"{', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
  for task, entry in results["tasks"].items():
    if "_y" in entry and len(entry["_y"]) != len(entry["_rows"]):
      raise ValueError(f"--scored {folder}: {task} has {len(entry['_y'])} labels for "
                       f"{len(entry['_rows'])} rows")
  _add_auprc(results, resamples, seed)
  return results


def check_same_labels(name_a: str, y_a: np.ndarray, name_b: str, y_b: np.ndarray,
                      task: str) -> None:
  """Raises ValueError when two models disagree on the labels of their common records: they
  were scored against different label tables, and pairing them would be meaningless."""
  if np.shape(y_a) != np.shape(y_b) or not np.array_equal(np.asarray(y_a), np.asarray(y_b)):
    raise ValueError(f"{name_a} and {name_b} disagree on the labels of their common {task} "
                     f"records: they were scored against different label tables")
