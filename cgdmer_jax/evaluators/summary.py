"""What an evaluation writes: each model's results and the summary over models.

Shared by `evaluate` (frozen probes and zero-shot) and `finetune`, so their folders have one
format and `evaluate --scored` / `--compare` read either:

  <out>/<model>/results.json   everything (private "_" keys dropped, NaN -> null)
  <out>/<model>/results.md     the model's table
  <out>/<model>/scores.npz     per-record labels and scores behind every cell (`stored.save`)
  <out>/summary.md             every model's rows and the paired comparisons
  <out>/summary.json           every cell's number, interval and reason, per model
  <out>/comparisons.json       the paired differences
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from etils import epath

from cgdmer_jax.evaluators import report
from cgdmer_jax.evaluators import retrieval
from cgdmer_jax.evaluators import stored


def clean(obj):
  """JSON-safe copy: NaN -> None, numpy scalars -> Python numbers, private '_' keys dropped."""
  if isinstance(obj, dict):
    return {str(k): clean(v) for k, v in obj.items() if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [clean(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return None if np.isnan(obj) else float(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  return obj


def model_dir(out: epath.Path, name: str) -> epath.Path:
  """The folder of one model (or group) under an evaluation's output folder."""
  return epath.Path(out) / name.replace("/", "_")


def write_results(out_dir: epath.Path, results: dict) -> None:
  """`results.json` (private keys dropped), `results.md` and, for a model, `scores.npz` (its
  private per-record arrays, `stored.save`) of one model or group."""
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / stored.RESULTS_FILE).write_text(json.dumps(clean(results), indent=2))
  text = report.markdown([results], per_class=True)
  table = retrieval.markdown([results])
  (out_dir / "results.md").write_text(text + ("\n" + table if table else ""))
  stored.save(out_dir, results)


def write_summary(out: epath.Path, all_results: Sequence[dict],
                  comparisons: Sequence[dict]) -> None:
  """`summary.md` (tables and comparisons), `comparisons.json` and `summary.json`."""
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  text = report.markdown(all_results)
  table = retrieval.markdown(all_results)
  if table:
    text += "\n" + table
  for c in comparisons:
    text += "\n" + report.compare_markdown(c)
  (out / "summary.md").write_text(text)
  (out / "comparisons.json").write_text(json.dumps(clean(comparisons), indent=2))
  (out / "summary.json").write_text(json.dumps(
      [{"model": r["model"], "dir": str(model_dir(out, r["model"])), "split": r["split"],
        "tasks": {t: {label: {"auc": c.get("auc"), "interval": c.get("interval"),
                              "auprc": c.get("auprc"), "auprc_interval": c.get("auprc_interval"),
                              "reason": c.get("reason"),
                              **({"seed_aucs": c["seed_aucs"]} if c.get("seed_aucs") else {}),
                              **({"seed_auprcs": c["seed_auprcs"]} if c.get("seed_auprcs")
                                 else {})}
                      for label, c in report.cells_of(e)}
                  for t, e in r["tasks"].items()},
        **({"retrieval": r["retrieval"]} if r.get("retrieval") else {})}
       for r in clean(list(all_results))],
      indent=2))
