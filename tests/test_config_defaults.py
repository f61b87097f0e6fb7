"""One source for every default: configs/ sets them, library code reads `config.x.y`, and an old
workdir's config.json is upgraded in one place (`cgdmer_jax/train/workdir_config.py`)."""

import json
import pathlib
import re

import jax
import numpy as np
import pytest

from cgdmer_jax import objective
from cgdmer_jax.train import checks
from cgdmer_jax.train import workdir_config
from configs import pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]
LEGACY_WORKDIR = REPO / "tests" / "data" / "legacy_workdir"  # written at commit 020482b
# A fallback default on a config: `config.get(`, `config.loss.get(`, `model_config.get(`.
CONFIG_NAMES = re.compile(r"\b(config(\.\w+)*|model_config|config\.model)\.get\(")


def _library_files():
  for pkg in ("cgdmer_jax", "data_pipelines"):
    yield from sorted((REPO / pkg).rglob("*.py"))


def test_no_config_fallback_in_library_code():
  hits = []
  for path in _library_files():
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if CONFIG_NAMES.search(line):
        hits.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
  assert not hits, "defaults repeated outside configs/:\n" + "\n".join(hits)


def test_the_fallback_pattern_is_seen():
  # The scan above would pass everything if its pattern matched nothing.
  assert CONFIG_NAMES.search('x = config.loss.get("balance", "none")')
  assert CONFIG_NAMES.search("config.get('variant', '')")
  assert CONFIG_NAMES.search('model_config.get("shared_width", 0)')
  assert not CONFIG_NAMES.search('build_info.get("special_ids")')


def test_every_legacy_key_is_a_current_setting():
  # The upgrade table names keys the configs still set (a typo would fill a dead key).
  current = json.loads(pretrain.get_config("size=tiny").to_json_best_effort())
  for dotted in workdir_config.LEGACY:
    node = current
    for part in dotted.split("."):
      assert part in node, f"{dotted} is not a setting of configs/pretrain.py"
      node = node[part]


def test_a_config_from_before_the_upgrade_builds_the_model_it_trained():
  raw = json.loads((LEGACY_WORKDIR / "config.json").read_text())
  assert "patch_stats" not in raw["model"] and "balance" not in raw["loss"]  # it is old
  config = workdir_config.read(LEGACY_WORKDIR / "config.json")
  assert config.model.patch_norm is False and config.model.patch_stats is False
  assert config.model.text.kind == "transformer" and config.model.text.init_from is None
  assert config.loss.balance == "none" and config.data.on_corrupt == "error"
  assert dict(config.model.special_ids) == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4}
  # Everything it predates comes back; nothing it had is touched.
  for section, values in raw.items():
    if isinstance(values, dict):
      for k, v in values.items():
        assert config[section][k] == v or isinstance(v, dict), (section, k)
  # The model of that run builds and embeds (a bare Dense patch embedding, as then).
  graphdef, params = objective.init(config, 0)
  assert not any("patch_in_norm" in "/".join(map(str, p)) for p, _ in
                 jax.tree_util.tree_flatten_with_path(params)[0])
  ecg = np.zeros((2, 12, int(config.data.fs * config.data.seconds)), np.float32)
  out = objective.encode_ecg_fn(graphdef, config)(
      params, ecg, np.full((2,), ecg.shape[-1], np.int32), np.ones((2, 12), bool))
  assert np.all(np.isfinite(np.asarray(out["embedding"])))


def test_resuming_an_old_run_names_the_setting_it_predates(tmp_path):
  (tmp_path / "checkpoints" / "200").mkdir(parents=True)
  (tmp_path / "config.json").write_text((LEGACY_WORKDIR / "config.json").read_text())
  now = pretrain.get_config("size=tiny")
  now.model.vocab_size = 500
  with pytest.raises(checks.ConfigError) as e:
    checks.check_resume(now, tmp_path)
  # Filled by the upgrade: a value and the override that restores it, not "absent".
  assert "model.patch_stats: the run has False, this config True" in str(e.value)
  assert "--config.model.patch_stats=False" in str(e.value)
