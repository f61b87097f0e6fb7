r"""Exports a trained model for inference, without the optimizer state or the training code.

  python -m cgdmer_jax.export --workdir=RUN --out=EXPORT [--dtype=float32|bfloat16] [--step=latest|N|best]

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
  export_info.json          shapes, sampling rate, dtypes, source step, platforms

The serialized functions have a symbolic batch dimension `b`, carry their weights as
constants, and are lowered for CPU, CUDA and TPU, so `jax.export.deserialize(bytes).call(...)`
runs them anywhere JAX runs, with no Python model code (see `cgdmer_jax.inference`).
Normalisation of the ECG happens inside the function, as in pretraining.

Exit status: 0 exported; 1 on an error (message printed).
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).")
_OUT = flags.DEFINE_string("out", None, "Export folder (created; must not hold another export "
                           "unless --overwrite).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Stored weights and compute dtype of the exported encoders.")
_STEP = flags.DEFINE_string("step", "latest", "Checkpoint: 'latest', a step number, or 'best' "
                            "(the params kept by zero-shot model selection, config.best).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing export in --out.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"],
                               "Platforms the StableHLO is lowered for.")


def main(argv) -> int:
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # results and failures are printed, not logged
  from cgdmer_jax import inference  # pylint: disable=g-import-not-at-top
  try:
    info = inference.export_model(_WORKDIR.value, _OUT.value, dtype=_DTYPE.value,
                                  step=_STEP.value, platforms=tuple(_PLATFORMS.value),
                                  overwrite=_OVERWRITE.value)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"exported step {info['step']} of {_WORKDIR.value} to {_OUT.value} "
        f"({info['dtype']}, platforms {', '.join(info['platforms'])})")
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(lambda argv: sys.exit(main(argv)))
