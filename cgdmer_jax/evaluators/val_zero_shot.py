"""Zero-shot macro AUC on a task's val split during pretraining, to keep the best checkpoint.

The val ECGs are read and canonicalised once (by the converter's code, at the run's rate and
length) and kept as int16; each evaluation embeds them and the class prompts with the current
parameters. The encoder functions are jitted once and take the parameters as an argument, so
repeated evaluations do not recompile.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Callable

import jax
import numpy as np

from cgdmer_jax import inference
from cgdmer_jax import objective
from cgdmer_jax.data import features
from cgdmer_jax.evaluators import auc
from cgdmer_jax.evaluators import records
from cgdmer_jax.evaluators import tasks as tasks_lib
from cgdmer_jax.evaluators import zero_shot
from cgdmer_jax.models import cgdmer
from cgdmer_jax.train import checks
from data_pipelines import locate


def scorer_factory(config) -> Callable | None:
  """The trainer's `make_scorer` for `config.best` (None when model selection is off).

  Raises:
    ConfigError: `best.zero_shot_task` names no MERL task.
  """
  task = config.best.zero_shot_task
  if not task:
    return None
  if task not in tasks_lib.TASKS:
    raise checks.ConfigError(
        f"config.best.zero_shot_task={task!r}; known: {sorted(tasks_lib.TASKS)}")
  return functools.partial(_build, task=task, data_root=config.best.data_root)


def _build(config, graphdef, tokenizer_path, *, task: str, data_root: str) -> "ValZeroShot":
  return ValZeroShot(config, graphdef, task=task, data_root=data_root,
                     tokenizer_path=tokenizer_path)


class ValZeroShot:
  """Callable `(params) -> macro AUC` on `split` of `task` (nan when no class is scorable)."""

  def __init__(self, config, graphdef, *, task: str, data_root: str, tokenizer_path: str,
               split: str = "val", batch_size: int = 64):
    if not cgdmer.branches(config)["contrastive"]:
      raise ValueError("zero-shot model selection needs the contrastive term (loss.contrastive "
                       "> 0)")
    t = tasks_lib.TASKS[task]
    labels = tasks_lib.read_labels(t, data_root)[split]
    self.classes = labels.classes
    self.metric = f"{split} zero-shot AUC {task}"
    find = records.locator(t, data_root, int(config.data.fs))
    probe = inference.Encoder(ecg_fn=None, text_fn=None, tokenizer_path=tokenizer_path,
                              fs=int(config.data.fs), seconds=float(config.data.seconds),
                              max_report_len=int(config.model.max_report_len), name=task)
    reader = locate.CanonicalReader(probe.signal_config(min_leads=1))
    ecg, valid, leads, y = [], [], [], []
    for row, label in zip(labels.frame.to_dict("records"), labels.y):
      loc = find(row)
      if loc is None:
        continue
      try:
        c = reader.read(loc)
      except Exception:
        continue  # unreadable val records do not block training; the count is reported
      ecg.append(c.ecg)
      valid.append(c.valid_len)
      leads.append(c.lead_mask)
      y.append(label)
    if not ecg:
      raise ValueError(f"no {split} record of {task} found under {data_root}")
    self.ecg_int16 = np.stack(ecg)
    self.valid = np.asarray(valid, np.int32)
    self.leads = np.stack(leads)
    self.y = np.stack(y)
    self.num_records = len(ecg)
    self.num_listed = len(labels.frame)
    prompts = zero_shot.load_prompts(pathlib.Path(data_root) / "merl_zeroshot" /
                                     "CKEPE_prompt.json")
    texts, _ = zero_shot.class_prompts(self.classes, prompts)
    self._ids, self._lens = probe.tokenize(texts)
    self._ecg_fn = jax.jit(objective.encode_ecg_fn(graphdef, config))
    self._text_fn = jax.jit(objective.encode_text_fn(graphdef, config))
    self._template = probe
    self._batch = batch_size

  def __call__(self, params) -> float:
    enc = inference.Encoder(
        ecg_fn=functools.partial(self._ecg_fn, params),
        text_fn=functools.partial(self._text_fn, params),
        tokenizer_path=self._template.tokenizer_path, fs=self._template.fs,
        seconds=self._template.seconds, max_report_len=self._template.max_report_len,
        name="val", batch_size=self._batch)
    mv = self.ecg_int16.astype(np.float32) / np.float32(features.UNITS_PER_MV)
    emb = enc.embed_ecg(mv, self.valid, self.leads)["embedding"]
    cls = enc.embed_ids(self._ids, self._lens)["embedding"]
    return auc.macro_auc(self.y, zero_shot.scores(emb, cls), self.classes).macro
