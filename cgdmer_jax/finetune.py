r"""Fine-tunes pretrained ECG encoders end to end on the MERL tasks or on your own labelled ECGs.

  python -m cgdmer_jax.finetune --workdir=RUN[,RUN2,...] [--random_init] [--step=latest|N|best] \
      --tasks=ptbxl_super,... --fractions=1,10,100 --data_root=DATA [--split=test|val] \
      [--features=shared|concat] [--leads=all|limb|I,II,...] [--out=DIR] \
      [--epochs=4 --patience=2 --batch_size=64 --lr=3e-3 --layer_decay=0.75 \
       --weight_decay=0.05 --warmup_epochs=1 --freeze_blocks=0 --seed=0] \
      [--max_epochs_per_run=K]
  python -m cgdmer_jax.finetune --workdir=RUN --records_dir=DIR --labels_csv=FILE [--tasks=]

Each `--workdir` entry is a training workdir or an export folder; `--random_init` adds the
same architecture with random weights, fine-tuned the same way (the baseline). The encoder's
pooled features (`--features`) feed a linear head; every weight is trained (AdamW, warmup +
cosine, layer-wise learning-rate decay; `--freeze_blocks=N` freezes the patch embedding and
the first N blocks) with sigmoid BCE. The tasks, label fractions, splits and lead sets are
`evaluate`'s; early stopping uses val (`--split=test`) or, with `--split=val` (test never
read), a seeded 10 % of the training subset (under 50 such rows: no selection, the last of
`--epochs`). An epoch over a small subset repeats its rows up to `--min_steps_per_epoch`
batches. `--records_dir` + `--labels_csv` fine-tune on
your own records: a CSV with columns record, split (train/val/test) and one 0/1 column per
class (cgdmer_jax/finetuning/custom.py).

Records are read once into memory-mapped arrays under `--cache_dir` (default `<out>/staged`).
Each (model, task, fraction) checkpoints every epoch; rerunning the same command resumes
where it stopped and gives the results of an uninterrupted run; finished cells are kept.
`--max_epochs_per_run=K` stops after K epochs with exit status 75 when work is left, for a
scheduler to resubmit.

Writes `<out>/<model>/results.{json,md}` and `scores.npz` in `evaluate`'s format (metric
`fine-tune <pct>% <features>`, probe kind `finetune`, readable by `evaluate --scored` and
`--compare=A:finetune,B:logreg`) and
`<out>/summary.md`, with the paired difference against random init when it is there.
Default --out: `<first workdir>/finetune`.
Exit status: 0 done; 2 bad usage (unknown task or lead, missing model or data, a malformed
labels CSV); 75 stopped by --max_epochs_per_run with work left (rerun it); 1 other errors.
"""

from __future__ import annotations

import sys

from absl import flags
from etils import epath

from cgdmer_jax import cli
from cgdmer_jax.finetuning import config as config_lib

# main() sets TF_CPP_MIN_LOG_LEVEL before JAX starts, so it imports the JAX modules inside.

_D = config_lib.FinetuneConfig()
_WORKDIR = flags.DEFINE_list("workdir", [], "Training workdirs and/or export folders.")
_RANDOM = flags.DEFINE_bool("random_init", False, "Also fine-tune a randomly initialised "
                            "encoder of the first model's architecture (the baseline).")
_RANDOM_SEED = flags.DEFINE_integer("random_seed", 0, "Seed of the random-init baseline.")
_STEP = flags.DEFINE_string("step", "latest", "Checkpoint of training workdirs: 'latest', a "
                            "step number, or 'best'.")
_TASKS = flags.DEFINE_list("tasks", ["ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm",
                                     "cpsc2018", "csn"], "Benchmark tasks (csn_exact: CSN's "
                           "exact labels); empty with --labels_csv for your data alone.")
_FRACTIONS = flags.DEFINE_list("fractions", ["1", "10", "100"],
                               "Label fractions of the training split, in percent.")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Folder holding ptbxl/, cpsc2018/, csn/.")
_TABLES_ROOT = flags.DEFINE_string("tables_root", None, "Folder the label tables are relative "
                                   "to (default: --data_root).")
_RECORDS_DIR = flags.DEFINE_string("records_dir", None, "Your own records (WFDB or .mat), "
                                   "with --labels_csv.")
_LABELS_CSV = flags.DEFINE_string("labels_csv", None, "CSV: record, split (train/val/test), "
                                  "one 0/1 column per class.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <first workdir>/finetune).")
_CACHE = flags.DEFINE_string("cache_dir", None, "Local folder of the staged signals (default: "
                             "<out>/staged).")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "val"], "The split that is scored; with "
                           "'val' the test split is never read.")
_FEATURES = flags.DEFINE_enum("features", _D.features, list(config_lib.FEATURES),
                              "Encoder features the head reads.")
_LEADS = flags.DEFINE_string("leads", "all", "Lead set for training and scoring: lead names "
                             "(I,II,III,aVR,aVL,aVF,V1-V6; any subset), 'limb' or 'all'; model "
                             "names get the suffix _leads-<set>.")
_RESAMPLES = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples per interval.")
_EPOCHS = flags.DEFINE_integer("epochs", _D.epochs, "Most epochs (the cosine schedule's "
                               "length).")
_PATIENCE = flags.DEFINE_integer("patience", _D.patience, "Epochs without a better selection "
                                 "AUC before stopping.")
_BATCH = flags.DEFINE_integer("batch_size", _D.batch_size, "ECGs per step (rounded up to a "
                              "multiple of the device count).")
_LR = flags.DEFINE_float("lr", _D.lr, "Peak learning rate (head and post-backbone parts).")
_LAYER_DECAY = flags.DEFINE_float("layer_decay", _D.layer_decay, "Layer-wise learning-rate "
                                  "decay per backbone block (1: uniform).")
_WD = flags.DEFINE_float("weight_decay", _D.weight_decay, "AdamW weight decay of weight "
                         "matrices.")
_WARMUP = flags.DEFINE_float("warmup_epochs", _D.warmup_epochs, "Linear warmup, in epochs.")
_FREEZE = flags.DEFINE_integer("freeze_blocks", _D.freeze_blocks, "Freeze the patch embedding "
                               "and the first N backbone blocks (0: train everything).")
_MIN_STEPS = flags.DEFINE_integer("min_steps_per_epoch", _D.min_steps_per_epoch, "Epochs "
                                  "over fewer training rows repeat them up to this many "
                                  "batches (small label fractions).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Head init, data order, held-out rows.")
_MAX_EPOCHS_RUN = flags.DEFINE_integer("max_epochs_per_run", 0, "Stop after this many epochs "
                                       "(exit 75 when work is left; 0: no limit).")


def main(argv) -> int:
  del argv
  cli.quiet_start()
  from cgdmer_jax.evaluators import leads  # noqa: PLC0415 (after TF_CPP_MIN_LOG_LEVEL)
  from cgdmer_jax.finetuning import runner  # noqa: PLC0415
  try:
    fractions = [float(f) / 100 for f in _FRACTIONS.value]
    config = config_lib.FinetuneConfig(
        features=_FEATURES.value, epochs=_EPOCHS.value, patience=_PATIENCE.value,
        batch_size=_BATCH.value, lr=_LR.value, layer_decay=_LAYER_DECAY.value,
        weight_decay=_WD.value, warmup_epochs=_WARMUP.value, freeze_blocks=_FREEZE.value,
        min_steps_per_epoch=_MIN_STEPS.value,
        seed=_SEED.value)
    run = runner.Run(split=_SPLIT.value, leads=leads.parse(_LEADS.value),
                     resamples=_RESAMPLES.value, config=config)
    out = _OUT.value or (str(runner.default_out(_WORKDIR.value)) if _WORKDIR.value else None)
    _, done = runner.finetune_models(
        _WORKDIR.value, random_init=_RANDOM.value, random_seed=_RANDOM_SEED.value,
        step=_STEP.value, task_names=[t for t in _TASKS.value if t], fractions=fractions,
        data_root=_DATA_ROOT.value, tables_root=_TABLES_ROOT.value,
        records_dir=_RECORDS_DIR.value, labels_csv=_LABELS_CSV.value, out=out,
        cache_dir=_CACHE.value, run=run, max_epochs_per_run=_MAX_EPOCHS_RUN.value)
  except (ValueError, FileNotFoundError) as e:
    return cli.fail(str(e).splitlines()[0] if str(e) else type(e).__name__, cli.USAGE)
  if not done:
    print(f"stopped after --max_epochs_per_run={_MAX_EPOCHS_RUN.value} epochs with work "
          "left: rerun the same command to continue", file=sys.stderr)
    return cli.RESUBMIT
  print((epath.Path(out) / "summary.md").read_text())
  print(f"results in {out}/")
  return cli.OK


if __name__ == "__main__":
  cli.run(main)
