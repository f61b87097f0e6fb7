r"""Exports a trained model for inference, without the optimizer state or the training code.

  python -m cgdmer_jax.export --workdir=RUN --out=EXPORT [--dtype=float32|bfloat16] \
      [--step=latest|N|best] [--hub_dir=DIR] [--format=jax,savedmodel]

The export folder holds:
  params/                   params-only Orbax checkpoint (in --dtype); usable as
                            --config.checkpoint.init_from=EXPORT for fine-tuning
  config.json               the model's full config
  tokenizer.model           the SentencePiece model of the pretraining data (wordpiece.json:
                            a pretrained checkpoint's WordPiece, `--tokenizer=hf:DIR`)
  ecg_encoder.jax_exported  jax.export (StableHLO) of
                              (ecg f32[b,12,T] mV, valid_len i32[b], lead_mask bool[b,12])
                              -> {embedding, shared, specific, probe}
  text_encoder.jax_exported (ids i32[b,L], len i32[b]) -> {embedding, shared, specific}
                            (absent for variants without a report tower)
  export_info.json          shapes, sampling rate, dtypes, source step, platforms, and the
                            model card's fields: input contract, outputs, training, the
                            workdir's evaluation (<workdir>/eval/summary.json), licence, citation
  MODEL_CARD.md             the model card, rendered from export_info.json
  savedmodel/               with --format=savedmodel: a TensorFlow SavedModel (jax2tf), signatures
                            `ecg` (ecg, valid_len, lead_mask) and `text` (ids, len), batch
                            polymorphic, float32 weights as variables; serves without JAX

With --hub_dir=DIR the same files and README.md (the model card with hub metadata) are also
written to DIR, a folder ready to upload to a model hub (nothing is uploaded);
`cgdmer_jax.load(DIR)` reads it.

The serialized functions have a symbolic batch dimension `b`, carry their weights as
constants, and are lowered for CPU, CUDA and TPU, so `jax.export.deserialize(bytes).call(...)`
runs them anywhere JAX runs, with no Python model code (`cgdmer_jax.inference.from_export`
reads the folder). `export_model` writes it.
Normalisation of the ECG happens inside the function, as in pretraining.

Exit status: 0 exported; 1 on an error (message printed).
"""

from __future__ import annotations

import json
import os

from absl import flags
from absl import logging
from etils import epath

from cgdmer_jax import cli
from cgdmer_jax import model_card
from cgdmer_jax import savedmodel
from cgdmer_jax.data import features
from data_pipelines import tfrecord

# main() sets TF_CPP_MIN_LOG_LEVEL before JAX starts, so JAX and the modules that import it are
# imported inside the functions that use them (which also keeps `--help` instant).


def export_model(workdir: str | os.PathLike, out: str | os.PathLike, *,
                 dtype: str = "float32", step: int | str | None = None,
                 platforms: tuple[str, ...] = ("cpu", "cuda", "tpu"),
                 overwrite: bool = False, hub_dir: str | os.PathLike | None = None,
                 formats: tuple[str, ...] = ("jax",)) -> dict:
  """Writes the export folder described in the module docstring.

  Args:
    workdir: a training workdir.
    out: the export folder.
    dtype: 'float32' or 'bfloat16' (weights stored and used in this dtype).
    step: checkpoint step; None/'latest' for the latest, 'best' for `<workdir>/best`.
    platforms: lowering platforms of the serialized functions.
    overwrite: replace an existing export (and hub folder).
    hub_dir: also write a model-hub folder there (`model_card.publish`).
    formats: 'jax' (always written: `cgdmer_jax.load` reads it) and optionally 'savedmodel'
      (a TensorFlow SavedModel in `savedmodel/`, through `jax2tf`).

  Returns:
    The export_info dict.
  """
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from cgdmer_jax import inference
  from cgdmer_jax import objective
  from cgdmer_jax.models import cgdmer
  from cgdmer_jax.train import checkpointing
  from cgdmer_jax.train import workdir_config

  workdir, out = epath.Path(workdir), epath.Path(out)  # local or object storage alike
  config_path = workdir / workdir_config.CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"{workdir} is not a training workdir (no {config_path.name})"
                            if workdir.exists() else f"{workdir} does not exist")
  config = workdir_config.read(config_path)
  inference.empty_export_folder(out, overwrite=overwrite, kind="an export")

  with config.unlocked():
    # Platform-independent attention so one StableHLO serves every platform.
    config.model.attention = "xla"
    config.model.dtype = dtype
  graphdef, abstract = objective.abstract_init(config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  step_dir = checkpointing.resolve_step_dir(inference.checkpoint_target(workdir, step))
  params = checkpointing.restore_params(step_dir, abstract, jax.tree.map(lambda _: device,
                                                                         abstract))
  store_dtype = jnp.dtype(dtype)
  params = jax.tree.map(lambda x: x.astype(store_dtype), params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / "params" if tfrecord.is_object_storage(out) else (out / "params").absolute(),
               params)

  num_samples = int(round(config.data.fs * config.data.seconds))
  L = int(config.model.max_report_len)
  b = jax.export.symbolic_shape("b")[0]

  def baked(fn):
    # Weights become constants of the exported program (arrays created inside the trace),
    # cast back to float32 parameters; `model.dtype` sets the matmul precision.
    return lambda *args: fn(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), *args)

  ecg = jax.export.export(jax.jit(baked(objective.encode_ecg_fn(graphdef, config))),
                          platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((b, features.NUM_LEADS, num_samples), jnp.float32),
      jax.ShapeDtypeStruct((b,), jnp.int32),
      jax.ShapeDtypeStruct((b, features.NUM_LEADS), jnp.bool_))
  (out / inference.ECG_EXPORT).write_bytes(ecg.serialize())
  has_text = cgdmer.branches(config)["text"]
  if has_text:
    text = jax.export.export(jax.jit(baked(objective.encode_text_fn(graphdef, config))),
                             platforms=tuple(platforms))(
        jax.ShapeDtypeStruct((b, L), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32))
    (out / inference.TEXT_EXPORT).write_bytes(text.serialize())

  unknown = set(formats) - set(savedmodel.FORMATS)
  if unknown:
    raise ValueError(f"unknown export formats {sorted(unknown)}: known "
                     f"{', '.join(savedmodel.FORMATS)}")
  savedmodel_dir = None
  if "savedmodel" in formats:
    savedmodel_dir = savedmodel.write_savedmodel(
        out / savedmodel.SAVEDMODEL, graphdef, params, config, num_samples=num_samples,
        has_text=has_text, platforms=tuple(platforms))

  tok = inference.tokenizer_of(config, workdir)
  if tok:
    (out / epath.Path(tok).name).write_bytes(epath.Path(tok).read_bytes())
  (out / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  info = {
      "format_version": inference.EXPORT_FORMAT_VERSION,
      "source_workdir": os.fspath(workdir) if tfrecord.is_object_storage(workdir) else str(
          workdir.resolve()),
      "step": (int(step_dir.name) if step_dir.name.isdigit()
               else json.loads((step_dir / "meta.json").read_text())["step"]
               if (step_dir / "meta.json").is_file() else None),
      "checkpoint": str(step_dir), "dtype": dtype,
      "platforms": list(platforms), "fs": int(config.data.fs),
      "seconds": float(config.data.seconds), "num_samples": num_samples,
      "leads": list(features.LEADS), "normalize": config.data.normalize,
      "max_report_len": L, "variant": config.variant,
      "probe_features": config.model.probe_features, "has_text_encoder": has_text,
      "tokenizer": epath.Path(tok).name if tok else None,
      "ecg_outputs": _signature(ecg),
      "text_outputs": _signature(text) if has_text else None,
      "jax_version": jax.__version__,
      "formats": {"jax": [inference.ECG_EXPORT] + ([inference.TEXT_EXPORT] if has_text else []),
                  **({"savedmodel": savedmodel.signatures_info(savedmodel_dir, has_text)}
                     if savedmodel_dir else {})},
  }
  info.update(model_card.card_fields(
      config, workdir, info, ecg_dims=model_card.dims(ecg),
      text_dims=model_card.dims(text) if has_text else None))
  (out / inference.EXPORT_INFO).write_text(json.dumps(info, indent=2, default=str))
  (out / inference.MODEL_CARD).write_text(model_card.model_card(info))
  if hub_dir is not None:
    model_card.publish(out, hub_dir, overwrite=overwrite)
  return info


def _signature(exported) -> dict[str, str]:
  """{output name: 'dtype[shape]'} of an exported function returning a dict."""
  import jax
  outs = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  return {k: f"{v.dtype}{list(map(str, v.shape))}" for k, v in outs.items()}


def define_flags() -> None:
  """The command's flags. Defined only when run as a command: `export_model` is imported by
  other commands (quickstart) whose flags share names with these."""
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).")
  flags.DEFINE_string("out", None, "Export folder (created; must not hold another export "
                      "unless --overwrite).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Stored weights and compute dtype of the exported encoders.")
  flags.DEFINE_string("step", "latest", "Checkpoint: 'latest', a step number, or 'best' "
                      "(the params kept by zero-shot model selection, config.best).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing export in --out.")
  flags.DEFINE_list("format", ["jax"], "Serving formats: jax (always written; what "
                    "cgdmer_jax.load reads) and savedmodel (TensorFlow SavedModel in "
                    "savedmodel/, via jax2tf: signatures ecg and text, any batch size).")
  flags.DEFINE_string("hub_dir", None, "Also write a model-hub folder (export files + README.md "
                      "model card) there; no upload.")
  flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"],
                    "Platforms the StableHLO is lowered for.")
  flags.mark_flags_as_required(["workdir", "out"])


def main(argv) -> int:
  del argv
  f = flags.FLAGS
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # results and failures are printed, not logged
  try:
    info = export_model(f.workdir, f.out, dtype=f.dtype, step=f.step,
                        platforms=tuple(f.platforms), overwrite=f.overwrite,
                        hub_dir=f.hub_dir, formats=tuple(dict.fromkeys(["jax", *f.format])))
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    return cli.fail(str(e), cli.USAGE)
  print(f"exported step {info['step']} of {f.workdir} to {f.out} "
        f"({info['dtype']}, platforms {', '.join(info['platforms'])})")
  if f.hub_dir:
    print(f"hub folder (export + README.md model card): {f.hub_dir}")
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
