r"""Evaluates pretrained encoders on the MERL benchmark: zero-shot and linear probing.

  python -m cgdmer_jax.evaluate --workdir=RUN[,RUN2,...] [--random_init] \
      --tasks=ptbxl_super,ptbxl_sub,ptbxl_form,ptbxl_rhythm,cpsc2018,csn \
      --fractions=1,10,100 --data_root=DATA [--tables_root=DIR] [--out=DIR]

Each `--workdir` entry is a training workdir or an export folder; `--random_init` adds the
same architecture with random weights (the baseline a pretrained encoder must beat); the
ablation variants are evaluated by listing their workdirs. The data root holds `ptbxl/`
(PTB-XL layout with `merl_splits/`), `cpsc2018/` (with `labels_icbeb_merl.csv`), `csn/`
(with `labels_chapman_merl.csv`) and `merl_zeroshot/CKEPE_prompt.json`.

Writes `<out>/<model>/results.{json,md}` and `plots/`, and `<out>/summary.md` with every
model's row. Default --out: `<first workdir>/eval`.
Exit status: 0 done; 2 bad usage (unknown task, missing model or data); 1 other errors.
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_list("workdir", [], "Training workdirs and/or export folders.")
_RANDOM = flags.DEFINE_bool("random_init", False, "Also evaluate a randomly initialised "
                            "encoder of the first model's architecture.")
_SEED = flags.DEFINE_integer("random_seed", 0, "Seed of the random-init baseline.")
_TASKS = flags.DEFINE_list("tasks", ["ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm",
                                     "cpsc2018", "csn"], "Benchmark tasks.")
_FRACTIONS = flags.DEFINE_list("fractions", ["1", "10", "100"],
                               "Linear-probing label fractions in percent.")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Folder holding ptbxl/, cpsc2018/, csn/ "
                                 "and merl_zeroshot/.")
_TABLES_ROOT = flags.DEFINE_string("tables_root", None, "Folder the label tables are relative "
                                   "to (default: --data_root).")
_PROMPTS = flags.DEFINE_string("prompts", None, "Zero-shot prompt JSON (default: "
                               "<data_root>/merl_zeroshot/CKEPE_prompt.json).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <first workdir>/eval).")
_EPOCHS = flags.DEFINE_integer("probe_epochs", 100, "Linear-probe epochs.")
_PROBE_LR = flags.DEFINE_float("probe_lr", 1e-3, "Linear-probe learning rate (AdamW).")
_PROBE_BATCH = flags.DEFINE_integer("probe_batch_size", 256, "Linear-probe batch size.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "ECGs per encoder call.")
_STEP = flags.DEFINE_string("step", "latest", "Checkpoint of training workdirs: 'latest', a "
                            "step number, or 'best' (kept by zero-shot model selection).")


def main(argv) -> int:
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # results and failures are printed, not logged
  from cgdmer_jax.evaluators import linear_probe  # pylint: disable=g-import-not-at-top
  try:
    fractions = [float(f) / 100 for f in _FRACTIONS.value]
    from cgdmer_jax.evaluators import runner  # pylint: disable=g-import-not-at-top
    probe = linear_probe.ProbeConfig(epochs=_EPOCHS.value, lr=_PROBE_LR.value,
                                     batch_size=_PROBE_BATCH.value)
    results = runner.evaluate_models(
        _WORKDIR.value, random_init=_RANDOM.value, random_seed=_SEED.value,
        task_names=_TASKS.value, fractions=fractions, data_root=_DATA_ROOT.value,
        tables_root=_TABLES_ROOT.value, prompts=_PROMPTS.value, out=_OUT.value,
        probe_config=probe, batch_size=_BATCH.value, step=_STEP.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(runner.markdown(results))
  out = pathlib.Path(_OUT.value or pathlib.Path(_WORKDIR.value[0]) / "eval")
  print(f"results and plots in {out}/")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
