"""Every command of the README answers `--help` with its own flags (one process each, in
parallel)."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Command -> flags its help must describe.
COMMANDS = {
    "cgdmer_jax.main": ("--config", "--workdir"),
    "cgdmer_jax.evaluate": ("--tasks", "--random_init"),
    "cgdmer_jax.export": ("--workdir", "--overwrite"),
    "cgdmer_jax.embed": ("--model", "--input"),
    "cgdmer_jax.benchmark": ("--devices", "--ablation"),
    "cgdmer_jax.perf.gpu_check": ("--out_dir", "--dry_run", "--peer_dir"),
    "cgdmer_jax.quickstart": ("--workdir", "--steps"),
    "data_pipelines.build": ("--source", "--output"),
}


def test_every_command_answers_help():
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for m in COMMANDS}
  failures = []
  for module, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    missing = [f for f in COMMANDS[module] if f not in out]
    # absl's --help exits with status 1 after printing; a crash shows a traceback.
    if proc.returncode not in (0, 1) or missing or "Traceback" in err:
      failures.append(f"{module}: status {proc.returncode}, missing {missing}\n{err[-2000:]}")
  assert not failures, "\n".join(failures)
