"""Runs whose workdir, data, exports and embeddings live on object storage (`pytest -k remote`).

The store is `tests/fake_remote.py`: `file://` URLs that epath, Orbax (as GCS) and TensorFlow
each serve through their remote code path, their bytes in a test folder. Every test also
checks that nothing was written locally under a mangled name (`file:/...`), which is what a
`pathlib.Path` makes of a URL (`Path('gs://bucket/run')` is `gs:/bucket/run`).
"""

import json
import shutil

import pytest
import tensorflow as tf
from etils import epath

from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import loop
from tests import fake_remote
from tests.test_train import TINY
from tests.test_train import tiny_config


@pytest.fixture
def store(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a mangled relative path would land here
  with fake_remote.object_store(tmp_path / "bucket") as root:
    yield root
  assert not fake_remote.local_names_with_scheme(tmp_path), "written under a mangled name"


def _metrics(workdir: str) -> list[dict]:
  text = (epath.Path(workdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines()]


def test_remote_training_stops_and_resumes_exactly(store, ptbxl_tfrecords, tmp_path):
  data = f"{store}/data/ptbxl100"
  shutil.copytree(ptbxl_tfrecords, data.removeprefix(fake_remote._ROOT))
  remote = f"{store}/runs/tiny"
  overrides = {"steps_per_run": 6, "checkpoint.every_steps": 100, "total_steps": 12}
  first = loop.train_and_evaluate(tiny_config(data, **overrides), remote)
  assert first["step"] == 6
  assert checkpointing.Checkpointer(f"{remote}/checkpoints", every_steps=1,
                                    keep=None).all_steps() == [6]
  second = loop.train_and_evaluate(tiny_config(data, **overrides), remote)
  assert second["step"] == 12
  # The same run on local disk, straight through: identical logged losses.
  local = tmp_path / "local"
  loop.train_and_evaluate(tiny_config(ptbxl_tfrecords, **{**overrides, "steps_per_run": 0}),
                          str(local))
  local_losses = [(r["step"], r["loss"]) for r in
                  map(json.loads, (local / "metrics.jsonl").read_text().splitlines())
                  if "loss" in r]
  remote_losses = dict((r["step"], r["loss"]) for r in _metrics(remote) if "loss" in r)
  assert remote_losses[5] == dict(local_losses)[5]  # logged before the stop
  assert remote_losses[12] == dict(local_losses)[12]  # steps 11-12, after the resume
  # Everything the trainer writes is in the bucket: config, metrics, TensorBoard, checkpoints.
  names = {p.name for p in epath.Path(remote).iterdir()}
  assert {"config.json", "metrics.jsonl", "last_metrics.json", "checkpoints",
          "tensorboard"} <= names, names
  assert tf.io.gfile.listdir(f"{remote}/tensorboard")
  assert json.loads(epath.Path(f"{remote}/config.json").read_text())["data"]["dir"] == data
  assert not (epath.Path(remote) / "trainer.lock").exists()  # released at the end
  assert TINY["log_every_steps"] == 5
