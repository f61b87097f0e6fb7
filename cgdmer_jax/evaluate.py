r"""Evaluates pretrained encoders on the MERL benchmark: zero-shot and linear probing.

  python -m cgdmer_jax.evaluate --workdir=RUN[,RUN2,...] [--random_init] \
      --tasks=ptbxl_super,ptbxl_sub,ptbxl_form,ptbxl_rhythm,cpsc2018,csn \
      --fractions=1,10,100 --data_root=DATA [--split=test|val] [--probe=merl,logreg] \
      [--features=shared,specific,concat] [--leads=all|limb|I,II,...] \
      [--retrieval_data=CONVERTED_DIR] \
      [--csn_labels=merl,exact] [--compare=A,B] \
      [--group=NAME=A+B+C ...] [--scored=DIR[,DIR2,...]] [--tables_root=DIR] [--out=DIR]

Each `--workdir` entry is a training workdir or an export folder; `--random_init` adds the
same architecture with random weights (the baseline a pretrained encoder must beat); the
ablation variants are evaluated by listing their workdirs. The data root holds `ptbxl/`
(PTB-XL layout with `merl_splits/`), `cpsc2018/` (with `labels_icbeb_merl.csv`), `csn/`
(with `labels_chapman_merl.csv`) and `merl_zeroshot/CKEPE_prompt.json`.

`--split=val` reports val and never reads test (for recipe decisions). Every macro AUC comes
with a 95 % bootstrap interval; `--compare=A,B` (default: the first model against the
random-init baseline) adds the paired interval of A - B; `--compare=A@10,B@100` pairs A's
probe cells at 10 % of the labels with B's at 100 %. `--group=NAME=A+B+C` (repeatable)
adds the mean over models A, B, C (one recipe pretrained with several seeds) as a row NAME,
with the interval of that mean; groups can be compared like models. `--scored=DIR` adds a
model folder of an earlier evaluation (`<out>/<model>/`, with its `scores.npz`) as an
evaluated model, without its checkpoint: seeds trained at different times are grouped and
paired on the same records. See docs/EVALUATION.md.

Writes `<out>/<model>/results.{json,md}`, `scores.npz` and `plots/`, and `<out>/summary.md`
with every model's row and the comparisons (`comparisons.json`). Default --out: `<first
workdir>/eval` (required when every model comes from --scored).
Exit status: 0 done; 2 bad usage (unknown task, missing model or data); 1 other errors.
"""

from __future__ import annotations

import sys

from absl import flags
from etils import epath

from cgdmer_jax import cli
from cgdmer_jax.evaluators import leads
from cgdmer_jax.evaluators import logreg_probe

# main() sets TF_CPP_MIN_LOG_LEVEL before JAX starts, so it imports the JAX evaluators inside.

_WORKDIR = flags.DEFINE_list("workdir", [], "Training workdirs and/or export folders.")
_RANDOM = flags.DEFINE_bool("random_init", False, "Also evaluate a randomly initialised "
                            "encoder of the first model's architecture.")
_BASELINES = flags.DEFINE_list("baselines", [], "Hand-crafted feature baselines scored "
                               "beside the models: band_power (log Welch power in 15 bands of "
                               "3 Hz per lead, 180 numbers), band_power_zscore (the same after "
                               "the model's per-lead z-score: no amplitude).")
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
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "val"], "The split that is scored; with "
                           "'val' the test split is never read.")
_PROBE = flags.DEFINE_list("probe", ["merl", "logreg"], "Linear probes: 'merl' (MERL's head "
                           "and settings), 'logreg' (standardised scikit-learn logistic "
                           "regression, C chosen on val).")
_FEATURES = flags.DEFINE_list("features", ["shared", "specific", "concat"], "Probed ECG "
                              "features: shared, specific, concat (= both).")
_RETRIEVAL = flags.DEFINE_string("retrieval_data", None, "A dataset converted by "
                                 "data_pipelines.build with reports: ECG <-> report retrieval "
                                 "(Recall@1/5/10, median rank) on its --split (the 'retrieval' "
                                 "task; giving this flag adds it).")
_LEADS = flags.DEFINE_string("leads", "all", "Lead set the ECGs are scored on: lead names "
                             "(I,II,III,aVR,aVL,aVF,V1-V6; any subset, comma separated), 'limb' "
                             "or 'all'. The other leads are hidden as unrecorded leads; model "
                             "names get the suffix _leads-<set>.")
_CSN_LABELS = flags.DEFINE_list("csn_labels", ["merl"], "Readings of the CSN labels for the "
                                "csn task: 'merl' (the table's columns, as published), "
                                "'exact' (diagnosis tokens); both: merl,exact.")
_COMPARE = flags.DEFINE_list("compare", None, "Model names A,B[,C,D...]: paired bootstrap "
                             "interval of A - B (and C - D, ...; default: first model vs "
                             "random init). NAME[:PROBE][@PCT] picks one probe kind (merl, "
                             "logreg, finetune) and/or label fraction per side, e.g. "
                             "A@10,B@100 or A:finetune,B:logreg.")
_GROUP = flags.DEFINE_multi_string("group", [], "NAME=A+B[+C...]: a seed group, the mean "
                                   "over the evaluated models A, B, ... (one recipe, several "
                                   "seeds) as one more row, usable in --compare. Repeatable.")
_SCORED = flags.DEFINE_list("scored", [], "Model folders of earlier evaluations "
                            "(<out>/<model>/ with results.json and scores.npz), added as "
                            "evaluated models under their stored names, for --group and "
                            "--compare; same --split and bootstrap settings required.")
_RESAMPLES = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples per interval.")
_EPOCHS = flags.DEFINE_integer("probe_epochs", 100, "MERL probe epochs (MERL: 100).")
_PROBE_LR = flags.DEFINE_float("probe_lr", 1e-3, "MERL probe learning rate (Adam; MERL: 1e-3).")
_PROBE_BATCH = flags.DEFINE_integer("probe_batch_size", 16, "MERL probe batch size (MERL: 16).")
_LR_DROP = flags.DEFINE_integer("probe_lr_drop_at", 40, "MERL probe: the learning rate drops "
                                "10x after this many scheduler steps (MERL's MultiStepLR, "
                                "stepped per batch and per epoch); 0: never.")
_C_GRID = flags.DEFINE_list("logreg_c", ["0.001", "0.01", "0.1", "1", "10"],
                            "Grid of the logreg probe's inverse regularisation C.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "ECGs per encoder call.")
_STEP = flags.DEFINE_string("step", "latest", "Checkpoint of training workdirs: 'latest', a "
                            "step number, or 'best' (kept by zero-shot model selection).")


def main(argv) -> int:
  del argv
  cli.quiet_start()
  from cgdmer_jax.evaluators import linear_probe
  try:
    fractions = [float(f) / 100 for f in _FRACTIONS.value]
    from cgdmer_jax.evaluators import runner
    protocol = runner.Protocol(
        split=_SPLIT.value, probes=tuple(_PROBE.value), features=tuple(_FEATURES.value),
        merl=linear_probe.ProbeConfig(epochs=_EPOCHS.value, lr=_PROBE_LR.value,
                                      batch_size=_PROBE_BATCH.value,
                                      lr_drop_at=_LR_DROP.value or None),
        logreg=logreg_probe.LogRegConfig(c_grid=tuple(float(c) for c in _C_GRID.value)),
        resamples=_RESAMPLES.value, leads=leads.parse(_LEADS.value))
    compare = None if _COMPARE.value is None else runner.compare_pairs(_COMPARE.value)
    results = runner.evaluate_models(
        _WORKDIR.value, random_init=_RANDOM.value, random_seed=_SEED.value,
        task_names=runner.expand_csn(_TASKS.value, _CSN_LABELS.value), fractions=fractions,
        data_root=_DATA_ROOT.value, tables_root=_TABLES_ROOT.value, prompts=_PROMPTS.value,
        out=_OUT.value, protocol=protocol, compare=compare, batch_size=_BATCH.value,
        step=_STEP.value, baselines=tuple(_BASELINES.value), groups=tuple(_GROUP.value),
        scored=tuple(_SCORED.value), retrieval_data=_RETRIEVAL.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  del results  # summary.md holds every model's rows and the paired comparisons
  out = epath.Path(_OUT.value) if _OUT.value else epath.Path(_WORKDIR.value[0]) / "eval"
  print((out / "summary.md").read_text())
  print(f"results and plots in {out}/")
  return 0


if __name__ == "__main__":
  cli.run(main)
