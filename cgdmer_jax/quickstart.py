r"""The whole pipeline on the real ECGs embedded in the repository, in a few minutes on a CPU.

  python -m cgdmer_jax.quickstart [--workdir=runs/quickstart] [--steps=300]

1. converts the embedded PTB-XL sample (`samples/ptbxl720`: 720 real records with their
   reports, 72 per fold, so 576 / 72 / 72 train / val / test) to TFRecords at 100 Hz
                                                           -> <workdir>/data
2. pretrains the tiny CG-DMER model                        -> <workdir>/pretrain
3. evaluates zero-shot and linear probing (10/100 %) on the MERL tasks the sample holds,
   next to a randomly initialised encoder                  -> <workdir>/pretrain/eval
4. exports the encoders for inference                      -> <workdir>/export
5. prints the headline (PTB-XL super: zero-shot and the logistic-regression probe at 10 and
   100 % labels, pretrained against random init with the paired difference), the results
   table and where the plots are.

Everything is a real command of the package run in-process: the same steps on a real
dataset are in the README. Rerunning resumes (the conversion and the checkpoints are kept).
The numbers of a few CPU minutes on 576 training ECGs are a smoke test, not a benchmark.
Exit status: 0 done; 1 on an error (with its traceback).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

from absl import flags
from absl import logging
from etils import epath

from cgdmer_jax import cli
from cgdmer_jax import export
from cgdmer_jax.evaluators import report
from data_pipelines import signal
from data_pipelines import tensorflow_quiet
from data_pipelines import write

# main() sets TF_CPP_MIN_LOG_LEVEL before JAX starts, so the modules that import JAX (trainer,
# evaluators, configs) are imported inside the functions that use them.

_REPO = pathlib.Path(__file__).resolve().parents[1]
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Where everything goes.")
_SAMPLE = flags.DEFINE_string("sample", str(_REPO / "samples" / "ptbxl720"),
                              "The embedded real-data sample (a data root with ptbxl/ and "
                              "merl_zeroshot/; cpsc2018/ and csn/ are evaluated when present, "
                              "as in tests/data).")
_STEPS = flags.DEFINE_integer("steps", 300, "Pretraining steps (batch 32).")
_PROBE_EPOCHS = flags.DEFINE_integer("probe_epochs", 50, "Linear-probe epochs.")

# The headline: MERL's main task, zero-shot and the logistic-regression probe on the
# default probe features (fixed before any result was seen; the other cells are in the table).
HEADLINE_TASK = "ptbxl_super"
HEADLINE = ("zero-shot", "linear probe 10% logreg concat", "linear probe 100% logreg concat")
TASKS = ("ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm", "cpsc2018", "csn")
OPTIONAL_TASKS = ("cpsc2018", "csn")  # evaluated when the sample has the folder of that name


def headline(eval_dir: epath.Path) -> str:
  """The headline cells of an evaluation folder: pretrained, random init, paired difference."""
  rows = {r["model"]: r for r in json.loads((eval_dir / "summary.json").read_text())}
  diffs = json.loads((eval_dir / "comparisons.json").read_text())
  diff = diffs[0]["tasks"].get(HEADLINE_TASK, {}) if diffs else {}
  out = [f"| {HEADLINE_TASK} | " + " | ".join(rows) + " | pretrain − random init |",
         "|---|" + "---|" * (len(rows) + 1)]
  for metric in HEADLINE:
    cells = [report.cell_text(r["tasks"].get(HEADLINE_TASK, {}).get(metric, {"auc": None}))
             for r in rows.values()]
    d = diff.get(metric)
    cells.append("–" if d is None else f"{100 * d['difference']:+.1f} "
                 f"({100 * d['interval'][0]:+.1f} to {100 * d['interval'][1]:+.1f})")
    out.append(f"| {metric} | " + " | ".join(cells) + " |")
  return "\n".join(out) + "\n"


def run(workdir: str | os.PathLike, sample: str | os.PathLike, config, *, steps: int = 300,
        probe_epochs: int = 50, fractions=(0.1, 1.0), protocol=None) -> dict:
  """Runs the five steps of the module docstring; returns paths and the results.

  Args:
    workdir: where everything goes.
    sample: the embedded real-data sample (a data root with ptbxl/, cpsc2018/, csn/).
    config: the pretraining config (`configs/pretrain.py:size=tiny`); its data folder, steps
      and intervals are set here.
    steps: pretraining steps.
    probe_epochs: linear-probe epochs (the merl probe).
    fractions: label fractions of the probes.
    protocol: `runner.Protocol` (None: both probes and every feature, on test).

  Returns:
    dict of the folders written (`data`, `pretrain`, `eval`, `export`), `results`, `plots`.
  """
  from cgdmer_jax.evaluators import linear_probe
  from cgdmer_jax.evaluators import runner
  from cgdmer_jax.train import loop

  workdir, sample = epath.Path(workdir), pathlib.Path(sample)  # the sample is a local folder
  if not (sample / "ptbxl" / "ptbxl_database.csv").is_file():
    raise FileNotFoundError(f"{sample} does not hold the embedded sample (ptbxl/...)")
  t0 = time.perf_counter()

  print("[1/5] converting the embedded PTB-XL sample to TFRecords (100 Hz)", flush=True)
  data_dir = workdir / "data"
  summary = write.build(write.BuildConfig(
      source="ptbxl", input=str(sample / "ptbxl"), output=str(data_dir),
      signal=signal.Config(fs=100, seconds=10.0), shards=4, vocab_size=500, workers=1,
      progress=True))
  print(summary.format(), flush=True)

  print(f"[2/5] pretraining the tiny model for {steps} steps", flush=True)
  config.data.dir = str(data_dir)
  config.total_steps = steps
  config.optim.warmup_steps = min(config.optim.warmup_steps, max(1, steps // 10))
  config.checkpoint.every_steps = max(1, min(config.checkpoint.every_steps, steps))
  config.eval_every_steps = steps
  config.log_every_steps = max(1, min(config.log_every_steps, steps))
  run_dir = workdir / "pretrain"
  last = loop.train_and_evaluate(config, str(run_dir))
  print(f"      final train loss {last.get('loss', float('nan')):.3f}, "
        f"val loss {last.get('val/loss', float('nan')):.3f}", flush=True)

  print("[3/5] evaluating: zero-shot and linear probing, with a random-init baseline",
        flush=True)
  eval_dir = run_dir / "eval"
  protocol = protocol or runner.Protocol()
  protocol = dataclasses.replace(protocol, merl=linear_probe.ProbeConfig(epochs=probe_epochs))
  tasks = [t for t in TASKS if t not in OPTIONAL_TASKS or (sample / t).is_dir()]
  results = runner.evaluate_models([str(run_dir)], random_init=True, task_names=tasks,
                                   fractions=list(fractions), data_root=sample, out=eval_dir,
                                   protocol=protocol)

  print("[4/5] exporting the encoders", flush=True)
  export_dir = workdir / "export"
  export.export_model(run_dir, export_dir, overwrite=True)

  print("[5/5] results (macro AUC x 100 on the sample's small test splits)\n", flush=True)
  print("Headline, with 95 % bootstrap intervals:\n")
  print(headline(eval_dir))
  print(report.markdown(results))
  plots = sorted(str(p) for p in eval_dir.glob("*/plots/*.png"))
  print(f"results: {eval_dir}/summary.md and {eval_dir}/<model>/results.json")
  print(f"plots:   {len(plots)} PNG files under {eval_dir}/<model>/plots/")
  records = sample / "csn" if (sample / "csn").is_dir() else sample / "ptbxl" / "records100"
  print(f"export:  {export_dir}  (try: python -m cgdmer_jax.embed --model={export_dir} "
        f"--input={records} --out={workdir}/embeddings.npy)")
  print(f"done in {time.perf_counter() - t0:.0f} s")
  return {"data": data_dir, "pretrain": run_dir, "eval": eval_dir, "export": export_dir,
          "results": results, "plots": plots}


def main(argv) -> int:
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  tensorflow_quiet.load()  # before anything else imports it: no start-up banner
  logging.set_verbosity(logging.WARNING)
  from cgdmer_jax.evaluators import runner
  from configs import pretrain
  run(_WORKDIR.value, _SAMPLE.value, pretrain.get_config("size=tiny"), steps=_STEPS.value,
      probe_epochs=_PROBE_EPOCHS.value,
      protocol=runner.Protocol(probes=("logreg",), features=("concat", "shared")))
  return 0


if __name__ == "__main__":
  cli.run(main)
