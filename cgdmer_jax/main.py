"""Pretraining entry point.

  python -m cgdmer_jax.main --config=configs/pretrain.py:size=tiny --workdir=DIR \
      --config.data.dir=DATA_DIR [--config.total_steps=2000 ...]

Multi-process (TPU slices, multi-node GPU): every process runs this same command;
`jax.distributed.initialize()` is called first (its arguments come from the environment on
Cloud TPU and SLURM, or from --coordinator_address/--num_processes/--process_id).
Exit status (cgdmer_jax/cli.py): 0 when the run reached config.total_steps; 75 when it stopped
earlier with a checkpoint (SIGTERM, config.steps_per_run): rerun the same command to continue;
2 on a usage error (a bad flag or config value, a missing data folder); 1 on another error.
One `error:` line says what happened.
"""

from __future__ import annotations

import logging as logging_std
import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from cgdmer_jax import cli
from data_pipelines import tensorflow_quiet

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pretrain.py:size=tiny; override any field with "
    "--config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the resolved config "
                               "go here; an existing workdir is resumed.", required=True)
_MULTIPROCESS = flags.DEFINE_enum(
    "multiprocess", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' does when the environment describes a "
    "multi-process job (SLURM with more than one task, Cloud TPU multi-host, or "
    "--num_processes > 1).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for jax.distributed.initialize.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of Orbax and TFDS (one line per file operation); keeps warnings."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if record.levelno >= logging_std.WARNING:
      return True
    return not any(s in record.pathname for s in ("/orbax/", "/tensorflow_datasets/", "/etils/",
                                                  "xla_bridge"))


def _is_multiprocess_env() -> bool:
  if _NUM_PROCESSES.value and _NUM_PROCESSES.value > 1:
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]


def main(argv) -> int:
  del argv
  # TensorFlow is only the input pipeline: keep it off the accelerators.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  tensorflow_quiet.load()  # before anything else imports it: no start-up banner
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # JAX and everything that imports it come after the environment above is set.
  import jax

  if _MULTIPROCESS.value == "on" or (_MULTIPROCESS.value == "auto" and _is_multiprocess_env()):
    kwargs = {}
    if _COORDINATOR.value:
      kwargs = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                    process_id=_PROCESS_ID.value)
    jax.distributed.initialize(**kwargs)
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)

  from cgdmer_jax.data import shard_scan
  from cgdmer_jax.evaluators import val_zero_shot
  from cgdmer_jax.train import checkpointing
  from cgdmer_jax.train import checks
  from cgdmer_jax.train import loop
  from cgdmer_jax.train import workdir_lock
  config = _CONFIG.value
  try:
    out = loop.train_and_evaluate(config, _WORKDIR.value,
                                  make_scorer=val_zero_shot.scorer_factory(config))
  except (checks.ConfigError, FileNotFoundError) as e:
    return cli.fail(str(e), cli.USAGE)
  except (loop.NonFiniteLossError, workdir_lock.WorkdirInUseError,
          shard_scan.DamagedShardError, checkpointing.UnreadableCheckpointError) as e:
    return cli.fail(str(e))
  if out["step"] < config.total_steps:
    logging.warning("stopped at step %d of %d: rerun the same command to continue (exit %d)",
                    out["step"], config.total_steps, cli.RESUBMIT)
    return cli.RESUBMIT
  return cli.OK


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main, config_flag="config")
