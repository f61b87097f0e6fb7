"""Typed `key=value` overrides: the one parser for config args, ablations and `--override`.

`--config=configs/pretrain.py:size=tiny,variant=full` (the config file's `arg`), the
benchmark's `--ablation=name:model.scan_layers=false,...` and `stmem_compare --override=...`
all spell settings as `key=value` text; each value takes the type of the value it replaces.
"""

from __future__ import annotations

from typing import Any
from typing import Mapping

import ml_collections

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def parse_items(text: str | None) -> dict[str, str]:
  """`"k1=v1,k2=v2"` -> {'k1': 'v1', 'k2': 'v2'} (empty items skipped).

  Args:
    text: comma-separated `key=value` items, or None / ''.

  Returns:
    dict of the raw value strings, in order.

  Raises:
    ValueError: on an item without `=` or with an empty key.
  """
  out: dict[str, str] = {}
  for item in (text or "").split(","):
    if not item:
      continue
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"{item!r} is not key=value (in {text!r})")
    out[key] = value
  return out


def typed(text: str, like: Any) -> Any:
  """`text` converted to the type of `like` (bool, int, float; anything else stays text).

  Args:
    text: the value as written.
    like: the value it replaces (its type decides the conversion).

  Returns:
    The converted value.

  Raises:
    ValueError: on text that is not a value of that type (e.g. 'maybe' for a bool).
  """
  if isinstance(like, bool):
    if text.lower() in _TRUE:
      return True
    if text.lower() in _FALSE:
      return False
    raise ValueError(f"{text!r} is not a bool (true/false, 1/0, yes/no)")
  if isinstance(like, (int, float)):
    return type(like)(text)
  return text


def apply(config: ml_collections.ConfigDict, items: Mapping[str, Any]
          ) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` with dotted keys set (`'model.remat': 'true'`).

  Args:
    config: the config to copy.
    items: dotted key -> value; a string value is typed like the value it replaces, any
      other value is set as given.

  Returns:
    The new config (`config` itself is not changed).

  Raises:
    KeyError: naming a key the config does not have.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in items.items():
    *path, leaf = key.split(".")
    node = out
    for part in path:
      node = node[part]
    if leaf not in node:
      raise KeyError(f"config has no field {key!r}")
    node[leaf] = typed(value, node[leaf]) if isinstance(value, str) else value
  return out
