"""Fine-tunes every model on every task and label fraction; results in `evaluate`'s format.

Per model the results dict has `evaluate`'s layout (`runner.evaluate_encoder`), with one
probe, `finetune`: `tasks[name].linear_probe.finetune[feature][pct]` is a `cells.score` cell
plus `subset`, `best_epoch`, `epochs_run`, `selection`, `val_curve` and `train_seconds`, so
`report.markdown`, `evaluate --scored` and `--compare` read it like a probe's. Label
fractions are drawn on the whole train table (MERL's `label_subset`) and intersected with
the readable rows, as `evaluate` does.

Selection never looks at the reported split: with `split='test'` early stopping uses val;
with `split='val'` (test is never read), or without readable val rows, a seeded 10 % of the
training subset is held out of training for it (`selection = 'train_holdout'`). Without a
scorable selection class the last epoch is taken (`selection = 'last_epoch'`).

Under `<out>/<model>/`: `cells/<task>_<pct>.{json,npz}` (finished cells, never recomputed;
their settings' digest is checked), `checkpoints/<task>_<pct>/` (the cell in progress, removed
when it is finished), and at the end `results.{json,md}` and `scores.npz`; `<out>/summary.md`
holds every model's rows and, with a random-init baseline, the paired comparison.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from typing import Sequence

import numpy as np
from etils import epath

from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import cells
from cgdmer_jax.evaluators import leads as leads_lib
from cgdmer_jax.evaluators import linear_probe
from cgdmer_jax.evaluators import records
from cgdmer_jax.evaluators import report
from cgdmer_jax.evaluators import summary
from cgdmer_jax.evaluators import tasks as tasks_lib
from cgdmer_jax.finetuning import config as config_lib
from cgdmer_jax.finetuning import custom
from cgdmer_jax.finetuning import data
from cgdmer_jax.finetuning import loop
from cgdmer_jax.finetuning import model
from data_pipelines import signal
from data_pipelines import tfrecord

PROBE = "finetune"


@dataclasses.dataclass(frozen=True)
class Run:
  """What every cell of one command shares."""
  split: str = "test"
  leads: tuple[str, ...] = leads_lib.ALL
  resamples: int = bootstrap.NUM_RESAMPLES
  config: config_lib.FinetuneConfig = config_lib.FinetuneConfig()

  def check(self) -> "Run":
    if self.split not in ("val", "test"):
      raise ValueError(f"--split must be val or test, got {self.split!r}")
    if self.resamples < 10:
      raise ValueError(f"bootstrap resamples must be >= 10, got {self.resamples}")
    self.config.check()
    return dataclasses.replace(self, leads=leads_lib.parse(self.leads))


def _digest(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _subset(split: data.Split, table_rows: int, fraction: float) -> tuple[np.ndarray, dict]:
  """Positions (in the kept train rows) of the fraction drawn on the whole train table."""
  drawn = linear_probe.label_subset(table_rows, fraction)
  pos = np.flatnonzero(np.isin(split.rows, drawn))
  return pos, {"drawn": int(len(drawn)), "unreadable_dropped": int(len(drawn) - len(pos)),
               "train_rows": int(len(pos))}


def _scorable(y: np.ndarray, columns: Sequence[int]) -> list[int]:
  return [j for j in columns if 0 < y[:, j].sum() < len(y)]


def _selection(train: data.Split, val: data.Split | None, seed: int
               ) -> tuple[data.Split, data.Split | None, str]:
  """(training rows, selection rows, selection name): val when given and scorable, else a
  seeded `HOLDOUT_FRACTION` of the training rows held out, or none (the last epoch) when that
  would be fewer than `MIN_HOLDOUT_ROWS`."""
  if val is not None and len(val) and _scorable(val.y, range(val.y.shape[1])):
    return train, val, "val"
  n = len(train)
  hold = int(round(config_lib.HOLDOUT_FRACTION * n))
  if hold < config_lib.MIN_HOLDOUT_ROWS or n - hold < 1:
    return train, None, "last_epoch"
  perm = np.random.default_rng(seed).permutation(n)
  return train.take(np.sort(perm[hold:])), train.take(np.sort(perm[:hold])), "train_holdout"


def _save_cell(folder: epath.Path, key: str, cell: dict) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  np.savez_compressed(buf, scores=np.asarray(cell.get("_scores", np.zeros((0, 0)))),
                      columns=np.asarray(cell.get("_columns", []), np.int64))
  (folder / f"{key}.npz").write_bytes(buf.getvalue())
  (folder / f"{key}.json").write_text(json.dumps(summary.clean(cell), indent=1))


def _load_cell(folder: epath.Path, key: str, fingerprint: str) -> dict | None:
  path = folder / f"{key}.json"
  if not path.is_file():
    return None
  cell = json.loads(path.read_text())
  if cell.get("fingerprint") != fingerprint:
    raise loop.StaleCheckpointError(f"{path} was fine-tuned with other settings (model, data "
                                    "or flags); rerun with those settings or another --out")
  if cell.get("auc") is not None:
    with np.load(io.BytesIO((folder / f"{key}.npz").read_bytes())) as npz:
      cell["_scores"], cell["_columns"] = npz["scores"], npz["columns"].tolist()
  return cell


class _Context:
  """Run-wide state: the mesh, the staging folder, the epoch budget, loaded task data."""

  def __init__(self, run: Run, cache_dir, budget: loop.Budget, progress: bool):
    self.run, self.cache_dir, self.budget, self.progress = run, cache_dir, budget, progress
    self.mesh = loop.make_mesh()
    self.keep = None if leads_lib.is_all(run.leads) else leads_lib.keep_mask(run.leads)
    self._tasks: dict = {}

  def task_data(self, task, tables_root, find, missing, fs: int, seconds: float
                ) -> data.TaskData:
    key = (task, fs, seconds)  # a custom task may share a benchmark task's name
    if key not in self._tasks:
      needed = ("train", "val", "test") if self.run.split == "test" else ("train", "val")
      self._tasks[key] = data.load_task(
          task, tables_root, find, missing, self.cache_dir,
          signal.Config(fs=fs, seconds=seconds, min_leads=1), keep=self.keep,
          splits_needed=needed, progress=self.progress)
    return self._tasks[key]


def _cell(ctx: _Context, source: model.Source, model_dir: epath.Path, name: str,
          td: data.TaskData, pct: str, fraction: float, counts) -> dict | None:
  """One (task, fraction) cell: stored, or fine-tuned now; None when the budget ran out."""
  run, cfg = ctx.run, ctx.run.config
  rep = run.split
  pos, info = _subset(td.splits["train"], td.table_rows["train"], fraction)
  if info["unreadable_dropped"]:
    print(f"{source.name} {name} {pct}%: {info['unreadable_dropped']} of the {info['drawn']} "
          "drawn training rows are unreadable and dropped")
  train, select, selection = _selection(td.splits["train"].take(pos),
                                        td.splits["val"] if rep == "test" else None, cfg.seed)
  y_rep = td.splits[rep].y
  columns, untrained, meta, cell = cells.start_probe(train.y, y_rep, td.classes, counts, rep,
                                                     PROBE)
  if cell is not None:
    return {**cell, "subset": info}
  sel_columns = _scorable(select.y, columns) if select is not None else []
  if select is not None and not sel_columns:
    select, selection = None, "last_epoch"
  fingerprint = _digest({"config": dataclasses.asdict(cfg), "origin": source.origin,
                         "task": name, "pct": pct, "split": rep, "leads": run.leads,
                         "classes": td.classes, "train": train.rows.tolist(),
                         "select": None if select is None else select.rows.tolist(),
                         "selection": selection, "resamples": run.resamples})
  key = f"{name}_{pct}"
  stored = _load_cell(model_dir / "cells", key, fingerprint)
  if stored is not None:
    return stored
  net, params = model.build(source, cfg.features, train.y.mean(0), cfg.seed)
  ckpt_dir = model_dir / "checkpoints" / key
  out = loop.run(net, params, loop.Cell(train, select, sel_columns, td.splits[rep]), cfg,
                 mesh=ctx.mesh, ckpt_dir=ckpt_dir, fingerprint=fingerprint, keep=ctx.keep,
                 budget=ctx.budget, progress=ctx.progress,
                 desc=f"{source.name} {name} {pct}%")
  if out is None:
    return None
  cell = {**cells.score(y_rep, out.scores, td.classes, counts, columns=columns,
                        untrained=untrained, split=rep), **meta,
          "subset": {**info, "trained_rows": len(train),
                     "selection_rows": 0 if select is None else len(select)},
          "selection": selection, "best_epoch": out.best_epoch, "epochs_run": out.epochs_run,
          "val_curve": out.val_curve, "train_seconds": round(out.train_seconds, 1),
          "fingerprint": fingerprint}
  _save_cell(model_dir / "cells", key, cell)
  if ckpt_dir.exists():
    ckpt_dir.rmtree()
  if not any(ckpt_dir.parent.iterdir()):
    ckpt_dir.parent.rmdir()
  return cell


def finetune_source(ctx: _Context, source: model.Source, name: str, model_dir: epath.Path,
                    tasks: Sequence[tuple], fractions: Sequence[float]) -> dict | None:
  """One model's results dict (see the module docstring); None when the budget ran out."""
  run = ctx.run
  rep = run.split
  results = {"model": name, "fractions": list(fractions), "split": rep, "probes": [PROBE],
             "features": [run.config.features], "leads": list(run.leads),
             "bootstrap": {"resamples": run.resamples, "seed": 0, "level": bootstrap.LEVEL},
             "finetune": {**dataclasses.asdict(run.config),
                          "holdout_fraction": config_lib.HOLDOUT_FRACTION,
                          "min_holdout_rows": config_lib.MIN_HOLDOUT_ROWS,
                          "devices": ctx.mesh.size, "source": source.origin}, "tasks": {}}
  fs, seconds = int(source.config.data.fs), float(source.config.data.seconds)
  for task, tables_root, make_find, missing in tasks:
    td = ctx.task_data(task, tables_root, make_find(fs), missing, fs, seconds)
    entry = {"classes": list(td.classes), "labels": task.labels, "counts": td.counts(),
             "table_rows": td.table_rows,
             "left_out": {s: rows for s, rows in td.left_out.items() if rows},
             "positives": {s: dict(zip(td.classes, map(int, d.y.sum(0))))
                           for s, d in td.splits.items()}}
    results["tasks"][task.name] = entry
    y_rep = td.splits[rep].y
    if not len(y_rep):
      entry["reason"] = (f"no {rep} rows in the label table" if not td.table_rows[rep]
                         else f"none of the {td.table_rows[rep]} {rep} records could be read")
      continue
    if not len(td.splits["train"]):
      raise ValueError(f"{task.name}: none of the {td.table_rows['train']} train records could "
                       f"be read (e.g. {td.left_out['train'][:1]})")
    counts = bootstrap.resample_counts(len(y_rep), run.resamples, 0)
    entry["_y"], entry["_rows"] = y_rep, td.splits[rep].rows
    by_pct = {}
    entry["linear_probe"] = {PROBE: {run.config.features: by_pct}}
    for frac in fractions:
      pct = f"{100 * frac:g}"
      cell = _cell(ctx, source, model_dir, task.name, td, pct, frac, counts)
      if cell is None:
        return None
      by_pct[pct] = cell
  return results


def _tasks(task_names, data_root, tables_root, records_dir, labels_csv) -> list[tuple]:
  """(task, tables root, fs -> locator, reason of a missing record) of every task."""
  out = []
  for t in task_names:
    task = tasks_lib.TASKS[t]
    out.append((task, tables_root, lambda fs, task=task: records.locator(task, data_root, fs),
                f"record not found under {data_root}/{task.root}"))
  if labels_csv:
    task = custom.read_task(labels_csv)
    find = custom.locator(records_dir)
    out.append((task, os.path.dirname(task.tables), lambda fs: find,
                f"record not found under {records_dir}"))
  return out


def _check(task_names, data_root, records_dir, labels_csv) -> None:
  unknown = [t for t in task_names if t not in tasks_lib.TASKS]
  if unknown:
    raise ValueError(f"unknown tasks {unknown}; known: {', '.join(tasks_lib.TASKS)}")
  if bool(records_dir) != bool(labels_csv):
    raise ValueError("--records_dir and --labels_csv go together: the folder of your records "
                     "and the CSV of their labels")
  if not task_names and not labels_csv:
    raise ValueError("nothing to fine-tune: pass --tasks, or --records_dir and --labels_csv")
  if task_names:
    if not data_root:
      raise ValueError("--data_root is required for --tasks: the folder holding ptbxl/, "
                       "cpsc2018/, csn/")
    if not os.path.isdir(data_root):
      raise FileNotFoundError(f"--data_root {data_root!r} is not a folder")
    if os.path.isfile(os.path.join(data_root, "ptbxl_database.csv")):
      raise FileNotFoundError(f"--data_root {data_root} is the ptbxl folder; --data_root is its "
                              "parent, which holds ptbxl/, cpsc2018/ and csn/")


def default_out(models: Sequence[str]) -> epath.Path:
  """`<first model>/finetune`."""
  return epath.Path(models[0]) / "finetune"


def finetune_models(models: Sequence[str], *, random_init: bool = False, random_seed: int = 0,
                    step: str | None = "latest", task_names: Sequence[str] = (),
                    fractions: Sequence[float] = (1.0,), data_root=None, tables_root=None,
                    records_dir=None, labels_csv=None, out=None, cache_dir=None,
                    run: Run = Run(), max_epochs_per_run: int = 0, progress: bool = True
                    ) -> tuple[list[dict], bool]:
  """Fine-tunes every model (and the random-init baseline) and writes the results.

  Args:
    models: training workdirs and/or export folders.
    random_init: also fine-tune the first model's architecture from random weights.
    random_seed: the baseline's init seed.
    step: checkpoint of training workdirs ('latest', a number, 'best').
    task_names: keys of `tasks.TASKS`.
    fractions: label fractions in (0, 1].
    data_root: folder of the benchmark datasets (for `task_names`).
    tables_root: folder the label tables are relative to (default: data_root).
    records_dir, labels_csv: a user's own labelled records (`custom.py`).
    out: output folder (default: `<first model>/finetune`).
    cache_dir: local folder of the staged signals (default: `<out>/staged` when `out` is
      local, else a temporary folder).
    run: split, lead set, bootstrap and fine-tuning settings.
    max_epochs_per_run: stop after this many epochs (0: no limit); rerun to continue.
    progress: progress bars.

  Returns:
    (one results dict per model, done): `done` is False when `max_epochs_per_run` stopped
    the run with work left; then nothing but the checkpoints and finished cells is written.
  """
  run = run.check()
  if not models:
    raise ValueError("pass at least one --workdir (training workdir or export folder)")
  for f in fractions:
    if not 0 < f <= 1:
      raise ValueError(f"label fractions are percentages in (0, 100], got {100 * f:g}")
  _check(task_names, data_root, records_dir, labels_csv)
  tasks = _tasks(task_names, data_root, tables_root or data_root, records_dir, labels_csv)
  out = epath.Path(out) if out else default_out(models)
  if cache_dir is None:
    cache_dir = (os.path.join(tempfile.gettempdir(), "cgdmer_jax_finetune_staged")
                 if tfrecord.is_object_storage(str(out)) else str(out / "staged"))
  sources = [model.load_source(m, step) for m in models]
  if random_init:
    sources.append(model.random_source(sources[0], random_seed))
  suffix = "" if leads_lib.is_all(run.leads) else f"_leads-{leads_lib.tag(run.leads)}"
  names = []
  for s in sources:
    name = s.name + suffix
    while name in names:
      name += "_"
    names.append(name)
  ctx = _Context(run, cache_dir, loop.Budget(max_epochs_per_run), progress)
  all_results = []
  for source, name in zip(sources, names):
    res = finetune_source(ctx, source, name, summary.model_dir(out, name), tasks, fractions)
    if res is None:
      return all_results, False
    all_results.append(res)
  for res in all_results:
    summary.write_results(summary.model_dir(out, res["model"]), res)
  comparisons = ([report.compare(all_results[0], all_results[-1], run.resamples, 0)]
                 if random_init else [])
  summary.write_summary(out, all_results, comparisons)
  return all_results, True
