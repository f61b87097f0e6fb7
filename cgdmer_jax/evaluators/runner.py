"""Runs the MERL benchmark for one encoder: zero-shot and linear probing on every task.

One `Protocol` says what is measured: the evaluated split (test, or val for recipe decisions
that must not look at test), the probes (`merl`: MERL's own head and settings; `logreg`:
standardised features and scikit-learn logistic regression with C chosen on val), the probed
features (`shared`, `specific`, `concat` = both; extracted once, probed side by side) and the
bootstrap. Label fractions are drawn on the whole train table (MERL's `train_test_split`) and
then intersected with the rows that could be read, so an unreadable record changes nothing but
its own row; the number dropped is printed and stored.

Writes into `out_dir`: `results.json` (everything: per-class AUCs and intervals, untrained and
skipped classes, rows left out, counts, positives per class), `results.md` (the table),
`scores.npz` (the per-record labels and scores behind every cell, so that `--scored` can group
and pair the model later without scoring it again; `stored.py`) and `plots/` (per-class AUC
bars and macro AUCs with intervals per task, t-SNE of the PTB-XL super-class ECGs of the
evaluated split).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Sequence

import numpy as np
from etils import epath

from cgdmer_jax import inference
from cgdmer_jax.evaluators import baselines as baselines_lib
from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import cells
from cgdmer_jax.evaluators import leads as leads_lib
from cgdmer_jax.evaluators import linear_probe
from cgdmer_jax.evaluators import logreg_probe
from cgdmer_jax.evaluators import plots
from cgdmer_jax.evaluators import records
from cgdmer_jax.evaluators import report
from cgdmer_jax.evaluators import retrieval
from cgdmer_jax.evaluators import seeds
from cgdmer_jax.evaluators import stored
from cgdmer_jax.evaluators import summary
from cgdmer_jax.evaluators import tasks as tasks_lib
from cgdmer_jax.evaluators import zero_shot
from cgdmer_jax.train import workdir_config
from data_pipelines.sources import base as source_base

TSNE_TASK = "ptbxl_super"
PROBES = ("merl", "logreg")
FEATURES = ("shared", "specific", "concat")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """What an evaluation measures (see the module docstring)."""
  split: str = "test"
  probes: tuple[str, ...] = PROBES
  features: tuple[str, ...] = FEATURES
  merl: linear_probe.ProbeConfig = linear_probe.ProbeConfig()
  logreg: logreg_probe.LogRegConfig = logreg_probe.LogRegConfig()
  resamples: int = bootstrap.NUM_RESAMPLES
  seed: int = 0
  leads: tuple[str, ...] = leads_lib.ALL   # the lead set the ECGs are scored on

  def check(self) -> "Protocol":
    """Raises ValueError on an unknown split, probe or feature."""
    if self.split not in ("val", "test"):
      raise ValueError(f"--split must be val or test, got {self.split!r}")
    for what, got, known in (("probe", self.probes, PROBES), ("feature", self.features,
                                                               FEATURES)):
      bad = [g for g in got if g not in known]
      if bad or not got:
        raise ValueError(f"unknown {what} {bad or got}; known: {', '.join(known)}")
    if self.resamples < 10:
      raise ValueError(f"bootstrap resamples must be >= 10, got {self.resamples}")
    return dataclasses.replace(self, leads=leads_lib.parse(self.leads))


def compare_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
  """`--compare` A,B,C,D -> [(A, B), (C, D)]; an odd or empty list is refused.

  An operand may name a probe kind and a label percentage, `A:finetune@10,B:logreg@100`
  (`report.parse_operand`); it is
  checked here for its form and against the evaluated models and fractions later.
  """
  if not names or len(names) % 2:
    raise ValueError(f"--compare takes pairs of model names A,B[,C,D...], got {list(names)}")
  for n in names:
    report.parse_operand(n)
  return list(zip(names[::2], names[1::2]))


def expand_csn(task_names: Sequence[str], readings: Sequence[str]) -> list[str]:
  """Replaces the `csn` task by one task per CSN label reading ('merl' -> csn, 'exact' ->
  csn_exact), in place."""
  bad = [r for r in readings if r not in tasks_lib.CSN_READINGS]
  if bad or not readings:
    raise ValueError(f"unknown CSN label reading {bad or list(readings)}; known: "
                     f"{', '.join(tasks_lib.CSN_READINGS)}")
  out = []
  for t in task_names:
    out += [tasks_lib.CSN_READINGS[r] for r in readings] if t == "csn" else [t]
  return list(dict.fromkeys(out))


def _features(x: dict[str, np.ndarray], name: str) -> np.ndarray:
  if name == "concat":
    return np.concatenate([x["shared"], x["specific"]], axis=-1)
  return x[name]


def _subset(data: records.TaskData, fraction: float) -> tuple[np.ndarray, dict]:
  """Positions (in the read rows) of the fraction drawn on the whole train table."""
  drawn = linear_probe.label_subset(data.table_rows["train"], fraction)
  pos = np.flatnonzero(np.isin(data.rows["train"], drawn))
  return pos, {"drawn": int(len(drawn)), "unreadable_dropped": int(len(drawn) - len(pos)),
               "train_rows": int(len(pos))}


def _probe(protocol: Protocol, probe: str, *args, **kwargs) -> dict:
  if probe == "merl":
    return linear_probe.train_and_score(*args, config=protocol.merl, **kwargs)
  return logreg_probe.train_and_score(*args, config=protocol.logreg, **kwargs)


def evaluate_encoder(encoder, task_names: Sequence[str], fractions: Sequence[float], *,
                     data_root, tables_root=None, prompts_path=None,
                     protocol: Protocol = Protocol(), out_dir=None, progress: bool = True,
                     retrieval_data=None, name: str | None = None) -> dict:
  """Zero-shot and linear-probe macro AUCs (with intervals) of `encoder` on `task_names`.

  Args:
    encoder: a `cgdmer_jax.inference.Encoder`.
    task_names: keys of `tasks.TASKS`.
    fractions: label fractions in (0, 1] for linear probing (MERL: 0.01, 0.1, 1).
    data_root: folder holding each task's dataset folder (ptbxl/, cpsc2018/, csn/).
    tables_root: folder the label tables are relative to (default: data_root).
    prompts_path: CKEPE prompt JSON (default: data_root/merl_zeroshot/CKEPE_prompt.json).
    protocol: split, probes, features and bootstrap settings.
    out_dir: where results and plots go (None: nothing written).
    progress: progress bars.
    retrieval_data: a converted dataset with reports: ECG <-> report retrieval on its
      `protocol.split` (`retrieval.py`), stored under results["retrieval"]; None: not run.
    name: the model's name in the results (default: the encoder's).

  Returns:
    The results dict written to results.json, plus private "_" keys (scores of the
    evaluated records) used by `report.compare`.
  """
  protocol = protocol.check()
  data_root = pathlib.Path(data_root)
  tables_root = pathlib.Path(tables_root or data_root)
  prompts_path = pathlib.Path(prompts_path or data_root / "merl_zeroshot" / "CKEPE_prompt.json")
  prompts = zero_shot.load_prompts(prompts_path) if encoder.text_fn is not None else None
  cache = records.FeatureCache(encoder, progress=progress,
                               keep=leads_lib.keep_mask(protocol.leads))
  out_dir = epath.Path(out_dir) if out_dir else None
  rep = protocol.split
  sel = "val" if rep == "test" else None  # never select on the split that is reported
  needed = ("train", "val", "test") if rep == "test" else ("train", "val")
  results = {"model": name or encoder.name, "fractions": list(fractions), "split": rep,
             "probes": list(protocol.probes), "features": list(protocol.features),
             "leads": list(protocol.leads),
             "bootstrap": {"resamples": protocol.resamples, "seed": protocol.seed,
                           "level": bootstrap.LEVEL},
             "merl_probe": dataclasses.asdict(protocol.merl),
             "logreg_probe": dataclasses.asdict(protocol.logreg), "tasks": {}, "plots": []}

  for name in task_names:
    task = tasks_lib.TASKS[name]
    data = records.load_task(task, data_root, tables_root, cache, splits_needed=needed)
    entry = {"classes": list(data.classes), "labels": task.labels, "counts": data.counts(),
             "table_rows": data.table_rows,
             "left_out": {s: rows for s, rows in data.left_out.items() if rows},
             "positives": {s: dict(zip(data.classes, map(int, y.sum(0))))
                           for s, y in data.y.items()}}
    if task.diagnosis_column is not None:
      entry["positives_by_reading"] = tasks_lib.label_positives(task, tables_root)
    results["tasks"][name] = entry
    y_rep = data.y[rep]
    if not len(y_rep):
      entry["reason"] = (f"no {rep} rows in the label table" if not data.table_rows[rep]
                         else f"none of the {data.table_rows[rep]} {rep} records could be read")
      continue
    counts = bootstrap.resample_counts(len(y_rep), protocol.resamples, protocol.seed)
    entry["_y"], entry["_rows"] = y_rep, data.rows[rep]
    if not task.zero_shot:
      entry["zero_shot"] = cells.no_cell("no class prompts for this task")
    elif prompts is None:
      entry["zero_shot"] = cells.no_cell("model has no report tower")
    else:
      texts, missing = zero_shot.class_prompts(data.classes, prompts)
      s = zero_shot.scores(data.x[rep]["embedding"], encoder.embed_text(texts)["embedding"])
      entry["zero_shot"] = {**cells.score(y_rep, s, data.classes, counts, split=rep),
                            "prompts_missing": missing}
    entry["linear_probe"] = {p: {f: {} for f in protocol.features} for p in protocol.probes}
    for frac in fractions:
      key = f"{100 * frac:g}"
      pos, info = _subset(data, frac)
      if info["unreadable_dropped"]:
        print(f"{encoder.name} {name} {key}%: {info['unreadable_dropped']} of the "
              f"{info['drawn']} drawn training rows are unreadable and dropped")
      for feat in protocol.features:
        x_train = _features(data.x["train"], feat)[pos]
        x_sel = _features(data.x[sel], feat) if sel else None
        x_rep = _features(data.x[rep], feat)
        for probe in protocol.probes:
          cell = _probe(protocol, probe, x_train, data.y["train"][pos], x_sel,
                        data.y[sel] if sel else None, x_rep, y_rep, data.classes, counts,
                        split=rep)
          entry["linear_probe"][probe][feat][key] = {**cell, "subset": info}
    if out_dir is not None:
      results["plots"] += [str(p.relative_to(out_dir)) for p in
                           _task_plots(out_dir, encoder.name, name, entry, rep, fractions)]
    if out_dir is not None and name == TSNE_TASK:
      p = plots.tsne_map(out_dir / "plots" / f"{name}_{rep}_tsne.png",
                         f"{encoder.name}: t-SNE of {name} {rep} ECG embeddings",
                         data.x[rep]["shared"], y_rep, data.classes)
      if p is not None:
        results["plots"].append(str(p.relative_to(out_dir)))

  if retrieval_data is not None:
    results[retrieval.TASK] = retrieval.evaluate(
        encoder, retrieval_data, rep, resamples=protocol.resamples, seed=protocol.seed,
        leads=protocol.leads, progress=progress)
  if out_dir is not None:
    summary.write_results(out_dir, results)
  return results


def _task_plots(out_dir, model, task, entry, split, fractions) -> list[epath.Path]:
  """Per-class bars (zero-shot and every probe/feature at the largest fraction) and macros."""
  del fractions  # each probe's largest fraction: `report.top_cells`
  per_class, macros = {}, {}
  for label, cell in report.cells_of(entry):
    if cell.get("auc") is not None:
      macros[label] = (cell["auc"], *(cell.get("interval") or [np.nan, np.nan]))
  for label, cell in report.top_cells(entry):
    if cell.get("auc") is not None:
      per_class[label] = {c: (a, *(cell["per_class_interval"].get(c) or [np.nan, np.nan]))
                          for c, a in cell["per_class"].items()}
  out = []
  if per_class:
    scored = {c for s in per_class.values() for c in s}
    out.append(plots.plot_per_class_auc(
        out_dir / "plots" / f"{task}_per_class_auc.png",
        f"{model}: {task} {split} per-class AUC (95% bootstrap intervals)", per_class,
        sorted(set(entry["classes"]) - scored)))
  if macros:
    out.append(plots.macro_intervals(out_dir / "plots" / f"{task}_macro_auc.png",
                                     f"{model}: {task} {split} macro AUC, 95% intervals",
                                     macros))
  return out


BASELINES = {"band_power": baselines_lib.bandpower_encoder,
             "band_power_zscore": functools.partial(baselines_lib.bandpower_encoder,
                                                    normalize="zscore")}


def evaluate_models(workdirs, *, random_init=False, random_seed=0, task_names, fractions,
                    data_root, tables_root=None, prompts=None, out=None,
                    protocol: Protocol = Protocol(), compare=None, batch_size=64,
                    progress=True, step=None, baselines=(), groups=(), scored=(),
                    retrieval_data=None) -> list[dict]:
  """Evaluates every model (workdirs/exports, plus random init) and writes the summary.

  Args:
    baselines: hand-crafted feature baselines scored beside the models (`BASELINES` keys,
      e.g. 'band_power'), canonicalised as the first model's records.
    compare: (A, B) model-name pairs whose paired differences are computed; None: the
      first model against the random-init baseline when there is one. A and B may be groups,
      and either may carry a probe kind and a label percentage (`A:finetune@10`,
      `report.parse_operand`).
    groups: `NAME=A+B[+...]` specs (`seeds.parse_groups`): seed groups of evaluated models,
      added as rows after the models (`seeds.group_result`).
    scored: model folders of earlier evaluations (`stored.load`), added as evaluated models
      after the others, under their stored names; they must have been scored on the same
      split with the same bootstrap settings.
    task_names: benchmark tasks; `retrieval` (`retrieval.TASK`) among them needs
      `retrieval_data`, which alone also turns it on.
    Others: as `evaluate_encoder`; `step` picks the checkpoint of training workdirs.

  Returns:
    One results dict per model (see `evaluate_encoder`).
  """
  protocol = protocol.check()
  if retrieval.TASK in task_names and retrieval_data is None:
    raise ValueError("the retrieval task needs --retrieval_data=DIR: a dataset converted by "
                     "data_pipelines.build, with reports, at the model's rate and length")
  task_names = [t for t in task_names if t != retrieval.TASK]
  unknown = [t for t in task_names if t not in tasks_lib.TASKS]
  if unknown:
    raise ValueError(f"unknown tasks {unknown}; known: {', '.join(tasks_lib.TASKS)}")
  if not workdirs and not scored:
    raise ValueError("pass at least one --workdir (training workdir or export folder) or "
                     "--scored folder")
  if not workdirs and (random_init or baselines):
    raise ValueError("--random_init and --baselines need a --workdir: its sampling rate and "
                     "record length are theirs")
  if not workdirs and not out:
    raise ValueError("--out is required when every model comes from --scored")
  if workdirs and not data_root:
    raise ValueError("--data_root is required: the folder holding ptbxl/, cpsc2018/, csn/ "
                     "(and merl_zeroshot/ for the prompts)")
  if workdirs:
    source_base.require_local(data_root, "--data_root")
  if workdirs and not pathlib.Path(data_root).is_dir():
    raise FileNotFoundError(f"--data_root {data_root!r} is not a folder")
  if workdirs and (pathlib.Path(data_root) / "ptbxl_database.csv").is_file():
    raise FileNotFoundError(f"--data_root {data_root} is the ptbxl folder; --data_root is its "
                            f"parent ({pathlib.Path(data_root).parent}), which holds ptbxl/, "
                            "cpsc2018/, csn/ and merl_zeroshot/")
  evaluated_pcts = [f"{100 * f:g}" for f in fractions]
  for pair in compare or ():
    bad_pct = [o.pct for o in map(report.parse_operand, pair)
               if o.pct is not None and o.pct not in evaluated_pcts]
    if bad_pct:
      raise ValueError(f"--compare {','.join(pair)}: label percentage {bad_pct[0]} is not "
                       f"among the evaluated --fractions {evaluated_pcts}")
  out = epath.Path(out or epath.Path(workdirs[0]) / "eval")  # local or object storage
  loaded = [stored.load(d, split=protocol.split, resamples=protocol.resamples,
                        seed=protocol.seed) for d in scored]
  encoders = [inference.load(w, step=step, batch_size=batch_size) for w in workdirs]
  if random_init:
    first = epath.Path(workdirs[0])
    config = workdir_config.read(first / workdir_config.CONFIG_FILE)
    encoders.append(inference.random_init(config, encoders[0].tokenizer_path, seed=random_seed,
                                          batch_size=batch_size))
  for b in baselines:
    if b not in BASELINES:
      raise ValueError(f"unknown baseline {b!r}; known: {', '.join(BASELINES)}")
    encoders.append(BASELINES[b](encoders[0].fs, encoders[0].seconds, batch_size=batch_size))
  names = []
  suffix = "" if leads_lib.is_all(protocol.leads) else f"_leads-{leads_lib.tag(protocol.leads)}"
  for name in [enc.name + suffix for enc in encoders] + [r["model"] for r in loaded]:
    while name in names:
      name += "_"
    names.append(name)
  group_members = seeds.parse_groups(groups, names)
  known = set(names) | set(group_members)
  operands = []
  if compare is None:  # names as they are: a workdir may be called `run@2`
    operands = ([(report.Operand(names[0]), report.Operand(names[len(workdirs)]))]
                if random_init else [])
  kinds = set(protocol.probes) | {report.FINETUNE} | {p for r in loaded
                                                      for p in r.get("probes", ())}
  for pair in compare or ():
    ops = [report.parse_operand(m, known) for m in pair]
    bad = [str(o) for o in ops if o.name not in known]
    if len(pair) != 2 or bad:
      raise ValueError(f"--compare needs two of the evaluated models or groups "
                       f"{names + list(group_members)}, got {list(pair)}")
    bad_probe = [o.probe for o in ops if o.probe and o.probe not in kinds]
    if bad_probe:
      raise ValueError(f"--compare {','.join(pair)}: probe kind {bad_probe[0]!r} is not among "
                       f"the evaluated ones {sorted(kinds)}")
    operands.append(ops)
  all_results = []
  for enc, name in zip(encoders, names):
    res = evaluate_encoder(enc, task_names, fractions, data_root=data_root,
                           tables_root=tables_root, prompts_path=prompts, protocol=protocol,
                           out_dir=out / name.replace("/", "_"), progress=progress,
                           retrieval_data=retrieval_data, name=name)
    all_results.append(res)
  for res, name in zip(loaded, names[len(encoders):]):
    res["model"] = name
    summary.write_results(out / name.replace("/", "_"), res)  # the output folder holds every model
    all_results.append(res)
  by_name = dict(zip(names, all_results))
  for group, members in group_members.items():
    res = seeds.group_result(group, [by_name[m] for m in members], protocol.resamples,
                             protocol.seed)
    summary.write_results(out / group.replace("/", "_"), res)
    by_name[group] = res
    all_results.append(res)
  comparisons = [report.compare(by_name[a.name], by_name[b.name], protocol.resamples,
                                protocol.seed,
                                percentages=(a.pct, b.pct), probes=(a.probe, b.probe))
                 for a, b in operands]
  summary.write_summary(out, all_results, comparisons)
  return all_results
