"""An export's encoders as a TensorFlow SavedModel (jax2tf): serving without JAX.

`export --format=savedmodel` calls `write_savedmodel`: signatures `ecg` (ecg, valid_len,
lead_mask) and `text` (ids, len), batch polymorphic, float32 weights as variables, `xla`
attention. JAX and TensorFlow are imported inside the function: `export` imports this module
for its constants, and its `--help` stays instant.
"""

from __future__ import annotations

import os

from etils import epath

from cgdmer_jax.data import features

FORMATS = ("jax", "savedmodel")
SAVEDMODEL = "savedmodel"


def signatures_info(path, has_text: bool) -> dict:
  sigs = {"ecg": {"inputs": ["ecg", "valid_len", "lead_mask"],
                  "outputs": ["embedding", "shared", "specific", "probe"]}}
  if has_text:
    sigs["text"] = {"inputs": ["ids", "len"], "outputs": ["embedding", "shared", "specific"]}
  return {"path": SAVEDMODEL, "signatures": sigs,
          "load": f"tf.saved_model.load(EXPORT/{SAVEDMODEL}).signatures['ecg'](ecg=..., "
                  "valid_len=..., lead_mask=...)"}


def write_savedmodel(path: epath.Path, graphdef, params, config, *, num_samples: int,
                     has_text: bool, platforms: tuple[str, ...]) -> epath.Path:
  """The encoders as a TensorFlow SavedModel: signatures `ecg` and `text`, batch polymorphic.

  The JAX functions are converted with `jax.experimental.jax2tf` (native serialization: the
  same StableHLO inside an `XlaCallModule` op, lowered for `platforms`); the weights are
  float32 `tf.Variable`s. Serving needs TensorFlow only, no JAX.
  """
  import jax
  import numpy as np
  import tensorflow as tf
  from jax.experimental import jax2tf

  from cgdmer_jax import objective

  leaves, treedef = jax.tree.flatten(params)
  module = tf.Module()
  module.weights = [tf.Variable(np.asarray(x, np.float32), trainable=False) for x in leaves]

  def converted(fn, shapes):
    def on_leaves(ws, *args):
      return fn(jax.tree.unflatten(treedef, ws), *args)
    return jax2tf.convert(on_leaves, polymorphic_shapes=[None, *shapes], with_gradient=False,
                          native_serialization_platforms=tuple(platforms))

  ecg_tf = converted(objective.encode_ecg_fn(graphdef, config), ["(b, _, _)", "(b,)", "(b, _)"])
  c = features.NUM_LEADS

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, c, num_samples], tf.float32, name="ecg"),
      tf.TensorSpec([None], tf.int32, name="valid_len"),
      tf.TensorSpec([None, c], tf.bool, name="lead_mask")])
  def ecg(ecg, valid_len, lead_mask):
    return ecg_tf(module.weights, ecg, valid_len, lead_mask)

  module.ecg = ecg
  signatures = {"ecg": ecg}
  if has_text:
    text_tf = converted(objective.encode_text_fn(graphdef, config), ["(b, _)", "(b,)"])
    length = int(config.model.max_report_len)

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, length], tf.int32, name="ids"),
        tf.TensorSpec([None], tf.int32, name="len")])
    def text(ids, len):  # the argument names are the signature's input names
      return text_tf(module.weights, ids, len)

    module.text = text
    signatures["text"] = text
  tf.saved_model.save(module, os.fspath(path), signatures=signatures)
  return path


