"""Runs the MERL benchmark for one encoder: zero-shot and linear probing on every task.

Writes into `out_dir`: `results.json` (everything: per-class AUCs, skipped classes, rows left
out, counts), `results.md` (the table) and `plots/` (per-class AUC bars per task, t-SNE of
the PTB-XL super-class test ECGs).
"""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np

from cgdmer_jax.evaluators import linear_probe
from cgdmer_jax.evaluators import plots
from cgdmer_jax.evaluators import records
from cgdmer_jax.evaluators import tasks as tasks_lib
from cgdmer_jax.evaluators import zero_shot

TSNE_TASK = "ptbxl_super"


def _pct(v) -> str:
  return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def _clean(obj):
  """JSON-safe copy: NaN -> None, numpy scalars -> Python numbers."""
  if isinstance(obj, dict):
    return {str(k): _clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_clean(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return None if np.isnan(obj) else float(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


def evaluate_encoder(encoder, task_names: Sequence[str], fractions: Sequence[float], *,
                     data_root, tables_root=None, prompts_path=None,
                     probe_config: linear_probe.ProbeConfig = linear_probe.ProbeConfig(),
                     out_dir=None, zero_shot_split: str = "test", progress: bool = True
                     ) -> dict:
  """Zero-shot and linear-probe macro AUCs of `encoder` on `task_names`.

  Args:
    encoder: a `cgdmer_jax.inference.Encoder`.
    task_names: keys of `tasks.TASKS`.
    fractions: label fractions in (0, 1] for linear probing (MERL: 0.01, 0.1, 1).
    data_root: folder holding each task's dataset folder (ptbxl/, cpsc2018/, csn/).
    tables_root: folder the label tables are relative to (default: data_root).
    prompts_path: CKEPE prompt JSON (default: data_root/merl_zeroshot/CKEPE_prompt.json).
    probe_config: linear head optimisation.
    out_dir: where results and plots go (None: nothing written).
    zero_shot_split: the split zero-shot is scored on.
    progress: progress bars.

  Returns:
    The results dict written to results.json.
  """
  data_root = pathlib.Path(data_root)
  tables_root = pathlib.Path(tables_root or data_root)
  prompts_path = pathlib.Path(prompts_path or data_root / "merl_zeroshot" / "CKEPE_prompt.json")
  prompts = zero_shot.load_prompts(prompts_path) if encoder.text_fn is not None else None
  cache = records.FeatureCache(encoder, progress=progress)
  out_dir = pathlib.Path(out_dir) if out_dir else None
  results = {"model": encoder.name, "fractions": list(fractions), "tasks": {}, "plots": []}

  for name in task_names:
    task = tasks_lib.TASKS[name]
    data = records.load_task(task, data_root, tables_root, cache)
    entry = {"classes": list(data.classes), "counts": data.counts(),
             "left_out": {s: rows for s, rows in data.left_out.items() if rows}}
    series: dict[str, dict[str, float]] = {}
    skipped: set[str] = set()
    if prompts is None:
      entry["zero_shot"] = {"skipped": "model has no report tower"}
    elif len(data.y[zero_shot_split]) == 0:
      entry["zero_shot"] = {"skipped": f"no {zero_shot_split} rows"}
    else:
      zs = zero_shot.evaluate(data.x[zero_shot_split]["embedding"], data.y[zero_shot_split],
                              data.classes, lambda t: encoder.embed_text(t)["embedding"],
                              prompts)
      entry["zero_shot"] = zs
      series["zero-shot"] = zs["per_class"]
      skipped |= set(zs["skipped"])
    entry["linear_probe"] = {}
    for frac in fractions:
      key = f"{100 * frac:g}"
      n_train = len(data.y["train"])
      if n_train == 0:
        entry["linear_probe"][key] = {"skipped": "no train rows"}
        continue
      sub = linear_probe.label_subset(n_train, frac)
      lp = linear_probe.train_and_score(
          data.x["train"]["probe"][sub], data.y["train"][sub], data.x["val"]["probe"],
          data.y["val"], data.x["test"]["probe"], data.y["test"], data.classes, probe_config)
      entry["linear_probe"][key] = lp
      if frac == max(fractions):
        series[f"linear probe {key}%"] = lp["test_per_class"]
        skipped |= set(lp["test_skipped"])
    results["tasks"][name] = entry
    if out_dir is not None and series:
      p = plots.per_class_auc(out_dir / "plots" / f"{name}_per_class_auc.png",
                              f"{encoder.name}: {name} test per-class AUC", series,
                              sorted(skipped - {c for s in series.values() for c in s}))
      results["plots"].append(str(p.relative_to(out_dir)))
    if out_dir is not None and name == TSNE_TASK and len(data.y["test"]):
      p = plots.tsne_map(out_dir / "plots" / f"{name}_test_tsne.png",
                         f"{encoder.name}: t-SNE of {name} test ECG embeddings",
                         data.x["test"]["probe"], data.y["test"], data.classes)
      if p is not None:
        results["plots"].append(str(p.relative_to(out_dir)))

  if out_dir is not None:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _clean(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(markdown([results]))
  return results


def markdown(all_results: Sequence[dict]) -> str:
  """Markdown table(s): rows model x metric, columns tasks; macro AUC x 100 on test.

  Linear probing shows the val-selected test AUC and, in brackets, MERL's max over epochs.
  """
  task_names = list(dict.fromkeys(t for r in all_results for t in r["tasks"]))
  lines = ["| model | metric | " + " | ".join(task_names) + " |",
           "|---|---|" + "---|" * len(task_names)]
  for r in all_results:
    rows = {"zero-shot": []}
    for frac in r["fractions"]:
      rows[f"linear probe {100 * frac:g}%"] = []
    for t in task_names:
      e = r["tasks"].get(t, {})
      zs = e.get("zero_shot", {})
      rows["zero-shot"].append(_pct(zs.get("macro_auc")) if "macro_auc" in zs else "n/a")
      for frac in r["fractions"]:
        lp = e.get("linear_probe", {}).get(f"{100 * frac:g}", {})
        cell = "n/a" if "test_auc" not in lp else (
            f"{_pct(lp['test_auc'])} [{_pct(lp['test_auc_max_over_epochs'])}]")
        rows[f"linear probe {100 * frac:g}%"].append(cell)
    for metric, cells in rows.items():
      lines.append(f"| {r['model']} | {metric} | " + " | ".join(cells) + " |")
  lines += ["", "Macro ROC-AUC x 100 on the test split. Linear probe: test AUC at the epoch "
            "with the best val AUC [MERL's max over epochs, selected on test]. Classes with "
            "no positive or no negative test example are left out of the macro mean (see "
            "results.json)."]
  return "\n".join(lines) + "\n"


def evaluate_models(workdirs, *, random_init=False, random_seed=0, task_names, fractions,
                    data_root, tables_root=None, prompts=None, out=None, probe_config=None,
                    batch_size=64, progress=True, step=None) -> list[dict]:
  """Evaluates every model (workdirs/exports, plus random init) and writes the summary.

  Returns:
    One results dict per model (see `evaluate_encoder`).
  """
  from cgdmer_jax import inference  # pylint: disable=g-import-not-at-top

  unknown = [t for t in task_names if t not in tasks_lib.TASKS]
  if unknown:
    raise ValueError(f"unknown tasks {unknown}; known: {', '.join(tasks_lib.TASKS)}")
  if not workdirs:
    raise ValueError("pass at least one --workdir (training workdir or export folder)")
  if not data_root:
    raise ValueError("--data_root is required: the folder holding ptbxl/, cpsc2018/, csn/ "
                     "(and merl_zeroshot/ for the prompts)")
  if not pathlib.Path(data_root).is_dir():
    raise FileNotFoundError(f"--data_root {data_root!r} is not a folder")
  out = pathlib.Path(out or pathlib.Path(workdirs[0]) / "eval")
  encoders = [inference.load(w, step=step, batch_size=batch_size) for w in workdirs]
  if random_init:
    first = pathlib.Path(workdirs[0])
    config = inference.load_config(first / "config.json")
    encoders.append(inference.random_init(config, encoders[0].tokenizer_path, seed=random_seed,
                                          batch_size=batch_size))
  probe_config = probe_config or linear_probe.ProbeConfig()
  names = set()
  all_results = []
  for enc in encoders:
    name = enc.name
    while name in names:
      name += "_"
    names.add(name)
    all_results.append(evaluate_encoder(
        enc, task_names, fractions, data_root=data_root, tables_root=tables_root,
        prompts_path=prompts, probe_config=probe_config, out_dir=out / name.replace("/", "_"),
        progress=progress))
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.md").write_text(markdown(all_results))
  (out / "summary.json").write_text(json.dumps(
      [{"model": r["model"], "dir": str(out / r["model"].replace("/", "_")),
        "tasks": {t: {"zero_shot": e.get("zero_shot", {}).get("macro_auc"),
                      "linear_probe": {k: v.get("test_auc") for k, v in
                                       e.get("linear_probe", {}).items()}}
                  for t, e in r["tasks"].items()}} for r in all_results], indent=2))
  return all_results
