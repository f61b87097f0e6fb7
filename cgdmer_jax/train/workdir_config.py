"""A run's resolved config on disk (`<workdir>/config.json`): written once, read and upgraded.

Library code reads `config.x.y` and never repeats a default. A workdir written before a
setting existed has no such key; `upgrade` fills each missing key with the value the run was
built and trained with then (which is not always today's default: e.g. runs from before
`model.patch_stats` were built without it). It is the one place such history lives, and
every reader of a `config.json` goes through `read`.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from cgdmer_jax.data import features

CONFIG_FILE = "config.json"

# What `model.text` meant in a config written before it existed: the from-scratch report
# transformer (configs/common.text_config('transformer', ...) without a checkpoint).
LEGACY_TEXT = {"kind": "transformer", "init_from": None, "freeze_layers": 0, "mlm_head": False}

# Dotted key -> the value a run written before the key existed was built and trained with.
LEGACY = {
    "variant": "",
    "steps_per_run": 0,
    "eval_every_steps": 0,
    "data.mix": "",
    "data.weight": 0.0,
    "data.prefetch": 2,
    "data.on_corrupt": "error",
    "model.batch_chunks": 1,
    "model.patch_norm": False,
    "model.patch_stats": False,
    "model.shared_width": 0,
    "model.text": LEGACY_TEXT,
    "model.special_ids": dict(pad=features.PAD_ID, unk=features.UNK_ID, bos=features.BOS_ID,
                              eos=features.EOS_ID, mask=features.MASK_ID),
    "model.normal_ids_start": features.NUM_SPECIAL,
    "optim.grad_accum_steps": 1,
    "optim.siglip_lr_mult": 1.0,
    "loss.balance": "none",
    "loss.balance_every_steps": 10,
    "loss.balance_decay": 0.7,
    "loss.balance_max": 1e4,
    "loss.siglip_impl": "all_gather",
    "loss.disentangle_estimator": "pearson",
    "loss.disentangle_cross": False,
    "model.heads_shared": "full",
    "loss.ramp_start": {k: 0 for k in ("ecg", "text", "contrastive", "disentangle")},
    "loss.ramp_steps": {k: 0 for k in ("ecg", "text", "contrastive", "disentangle")},
    "checkpoint.strict_restore": False,
    "best.zero_shot_task": "",
    "best.data_root": None,
    "diagnostics.every_steps": 0,
}


def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
  """A copy of a parsed `config.json` with every key of `LEGACY` it lacks filled in.

  Args:
    saved: the JSON object a run wrote (any age).

  Returns:
    The same settings, with absent keys at the values the run was built with.
  """
  out = copy.deepcopy(saved)
  for dotted, value in LEGACY.items():
    *parents, leaf = dotted.split(".")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    if leaf not in node:
      node[leaf] = copy.deepcopy(value)
  return out


def path_of(workdir: str | os.PathLike) -> epath.Path:
  return epath.Path(workdir) / CONFIG_FILE


def read_json(path: str | os.PathLike) -> dict[str, Any]:
  """The upgraded JSON of a `config.json` file."""
  return upgrade(json.loads(epath.Path(path).read_text()))


def read(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The resolved config a training run wrote (`config.json`, at `path`), upgraded."""
  return ml_collections.ConfigDict(read_json(path))


def write(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """Process 0 writes the resolved config to `<workdir>/config.json`."""
  if jax.process_index() == 0:
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))
