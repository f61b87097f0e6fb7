r"""Disentanglement diagnostics of a trained checkpoint: is `specific` more than a copy?

  python -m cgdmer_jax.diagnose --workdir=RUN [--step=latest|N|best] [--split=val] \
      [--batch_size=32] [--data_dir=DIR] [--seed=0] [--out=FILE.json]

Reads the workdir's `config.json` and its `data.dir` converted dataset (or `--data_dir`),
streams `--split` through the model and prints a table of `evaluators.disentanglement`'s
measures: the training loss against its shuffled-pair chance level, debiased CKA of shared vs
specific, effective rank of every space, the heads' errors with a branch replaced by its
batch mean, and how much of each ECG space the report predicts. `--out` writes every number
as JSON (default: `<workdir>/diagnose_<split>.json`).
Exit status: 0 done; 2 bad usage (not a workdir, no such checkpoint or dataset); 1 other errors.
"""

from __future__ import annotations

from absl import flags
from etils import epath

from cgdmer_jax import cli

# main() sets TF_CPP_MIN_LOG_LEVEL before JAX and TF start: the evaluator is imported inside.

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir.")
_STEP = flags.DEFINE_string("step", "latest", "'latest', a step number, or 'best'.")
_SPLIT = flags.DEFINE_string("split", "val", "Split of the converted dataset.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Rows per batch of the per-batch measures "
                              "(default: the run's data.batch_size, the training batch).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted dataset (default: the run's "
                                "data.dir).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the masks, shuffled pairs and ridge split.")
_OUT = flags.DEFINE_string("out", None, "JSON output (default: <workdir>/diagnose_<split>.json).")


def main(argv) -> int:
  del argv
  cli.quiet_start()
  if not _WORKDIR.value:
    raise cli.UsageError("--workdir is required (a training workdir)")
  from cgdmer_jax.evaluators import disentanglement
  from cgdmer_jax.evaluators import disentanglement_table
  step = _STEP.value
  if step not in ("latest", "best") and not step.isdigit():
    raise cli.UsageError(f"--step={step}: pass 'latest', 'best' or a step number")
  out = _OUT.value or str(epath.Path(_WORKDIR.value) / f"diagnose_{_SPLIT.value}.json")
  try:
    res = disentanglement.diagnose(
        _WORKDIR.value, step=int(step) if step.isdigit() else step, split=_SPLIT.value,
        batch_size=_BATCH.value, data_dir=_DATA_DIR.value, seed=_SEED.value)
  except (FileNotFoundError, ValueError) as e:  # not a workdir, no checkpoint, data or split
    return cli.fail(str(e), cli.USAGE)
  disentanglement.write_json(res, out)
  print(disentanglement_table.format_table(res))
  print(f"\nwritten: {out}")
  return cli.OK


if __name__ == "__main__":
  cli.run(main)
