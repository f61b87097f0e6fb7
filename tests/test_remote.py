"""Runs whose workdir, data, exports and embeddings live on object storage (`pytest -k remote`).

The store is `tests/fake_remote.py`: `file://` URLs that epath, Orbax (as GCS) and TensorFlow
each serve through their remote code path, their bytes in a test folder. Every test also
checks that nothing was written locally under a mangled name (`file:/...`), which is what a
`pathlib.Path` makes of a URL (`Path('gs://bucket/run')` is `gs:/bucket/run`).
"""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from etils import epath

from cgdmer_jax import embed
from cgdmer_jax import export
from cgdmer_jax import inference
from cgdmer_jax.evaluators import runner
from cgdmer_jax.evaluators import stored
from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import loop
from data_pipelines import locate
from tests import conftest
from tests import fake_remote
from tests.test_train import TINY
from tests.test_train import tiny_config


def _metrics(workdir: str) -> list[dict]:
  text = (epath.Path(workdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_remote_training_resumes_exactly_then_exports_and_embeds(store, ptbxl_tfrecords,
                                                                 tmp_path):
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
  # Export from the bucket to the bucket, then embed records with the exported model.
  exported = f"{store}/models/tiny"
  info = export.export_model(remote, exported, platforms=("cpu",))
  assert info["step"] == 12
  assert (epath.Path(exported) / inference.EXPORT_INFO).is_file()
  encoder = inference.load(exported, batch_size=8)
  locs = locate.read_inputs(str(conftest.EMBEDDED / "ptbxl" / "records100" / "00000"))
  out = f"{store}/emb/ptbxl.npy"
  rows = embed.embed_records(encoder, locs, out, show_progress=False)
  with epath.Path(out).open("rb") as f:
    emb = np.load(f)
  assert emb.ndim == 2 and emb.shape[0] == sum(r["status"] == "ok" for r in rows) > 0
  assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)  # unit-norm embeddings
  index = epath.Path(out).with_name("ptbxl.index.csv").read_text().splitlines()
  assert len(index) == len(locs) + 1
  # The same export, loaded from the bucket, embeds as the live model in the workdir does.
  live = inference.load(remote, batch_size=8)
  canon = locate.CanonicalReader(live.signal_config()).read(locs[0])
  args = (canon.millivolts[None], np.asarray([canon.valid_len]), canon.lead_mask[None])
  np.testing.assert_allclose(encoder.embed_ecg(*args)["embedding"],
                             live.embed_ecg(*args)["embedding"], atol=1e-5)



@pytest.mark.slow
def test_remote_evaluation_outputs_and_stored_scores(store, ptbxl_tfrecords, tmp_path):
  # A random-init model of a tiny run is enough to check where evaluation writes and reads.
  remote = f"{store}/runs/eval"
  loop.train_and_evaluate(tiny_config(ptbxl_tfrecords, total_steps=2, log_every_steps=1),
                          remote)
  out = f"{store}/eval"
  protocol = runner.Protocol(split="val", probes=("logreg",), features=("shared",),
                             resamples=10)
  runner.evaluate_models([remote], task_names=["ptbxl_super"], fractions=[1.0],
                         data_root=str(conftest.EMBEDDED), out=out, protocol=protocol,
                         batch_size=16, progress=False)
  names = {p.name for p in epath.Path(out).iterdir()}
  assert {"summary.md", "summary.json", "comparisons.json"} <= names, names
  model_dirs = [p for p in epath.Path(out).iterdir() if (p / "scores.npz").exists()]
  assert model_dirs
  # The stored per-record scores are read back from the bucket (`evaluate --scored`).
  again = stored.load(model_dirs[0], split="val", resamples=10, seed=0)
  assert again["tasks"]["ptbxl_super"]["zero_shot"]["auc"] is not None
  pngs = list(epath.Path(out).glob("*/plots/*.png"))
  assert pngs, "no plot written"
