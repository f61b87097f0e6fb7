"""Our masked-ECG step against ST-MEM's own PyTorch step, interleaved on one machine.

  python -m cgdmer_jax.perf.stmem_compare --size=tiny --rounds=5 --steps_per_round=5 \
      --peer_python=PEER_VENV/bin/python --peer_script=PATH/st_mem_throughput.py \
      --peer_dir=ST_MEM_TREE

Each round times `--steps_per_round` of our step (`configs/stmem_matched.py:size=SIZE`, compiled
once, each step waited for) and then runs the peer harness (`st_mem_throughput.py`: ST-MEM's model
and optimizer from an exported ST-MEM tree, float32, same batch, length, patch and mask
ratio) for the same number of steps in a subprocess. A shared machine's load changes from
minute to minute, so the ratio is taken per round and the rounds' median is reported, with
the 1-minute load average before each round. No ST-MEM code is in this repository.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time

import jax
import numpy as np
from absl import flags

from cgdmer_jax import cli
from cgdmer_jax import overrides
from cgdmer_jax.perf import step_timing
from cgdmer_jax.train import loop
from cgdmer_jax.train import sharding
from configs import stmem_matched

_SIZE = flags.DEFINE_enum("size", "tiny", ["tiny", "small", "base"], "ST-MEM encoder size.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds (ours, then the peer).")
_STEPS = flags.DEFINE_integer("steps_per_round", 5, "Timed steps per round and side.")
_THREADS = flags.DEFINE_integer("threads", len(os.sched_getaffinity(0)), "Peer torch threads.")
_PEER_PYTHON = flags.DEFINE_string("peer_python", None, "Python with torch for the peer.")
_PEER_SCRIPT = flags.DEFINE_string("peer_script", None, "The peer harness.")
_PEER_DIR = flags.DEFINE_string("peer_dir", None, "Exported ST-MEM tree.")
_OVERRIDES = flags.DEFINE_list("override", [], "key=value overrides of our config.")
_OUT = flags.DEFINE_string("json_out", None, "Write the rounds as JSON here.")


def peer_command(python: str, script: str, peer_dir: str, size: str, batch: int, steps: int,
                 threads: int, *, warmup: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
  """The peer harness's command line for the matched setting (2250 samples, patch 75).

  Args:
    python: interpreter with torch and einops; script: `st_mem_throughput.py`;
    peer_dir: the exported ST-MEM tree.
    size: 'tiny' | 'small' | 'base'; batch, steps, warmup, threads: as the harness takes them.
    extra: more harness flags, e.g. ('--device', 'cuda', '--autocast', 'bf16', '--compile').

  Returns:
    argv for `subprocess.run`.
  """
  return [python, script, "--peer_dir", peer_dir,
          "--size", size, "--seq_len", "2250", "--patch_size", "75", "--batch", str(batch),
          "--mask_ratio", "0.75", "--warmup", str(warmup), "--steps", str(steps),
          "--threads", str(threads), *extra]


def main(argv) -> None:
  del argv
  config = stmem_matched.get_config(f"size={_SIZE.value}")
  config = overrides.apply(config, overrides.parse_items(",".join(_OVERRIDES.value)))
  B = config.data.batch_size
  mesh = sharding.make_mesh(config, devices=jax.devices()[:1])
  s = loop.setup(config, mesh)
  cmd = peer_command(_PEER_PYTHON.value, _PEER_SCRIPT.value, _PEER_DIR.value, _SIZE.value, B,
                     _STEPS.value, _THREADS.value)
  print(f"ours: the trainer's step of configs/stmem_matched.py:size={_SIZE.value}"
        f"{' with ' + ','.join(_OVERRIDES.value) if _OVERRIDES.value else ''}, in this process "
        "(1 device)")
  print("peer: " + " ".join(cmd), flush=True)
  rounds = []
  with jax.set_mesh(mesh):
    state = s.init_state()
    batch = sharding.global_batch(step_timing.synthetic_batch(config, B), mesh)
    compiled = s.train_step.lower(state, batch).compile()
    for _ in range(2):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    for r in range(_ROUNDS.value):
      load = os.getloadavg()[0]
      ours = []
      for _ in range(_STEPS.value):
        t0 = time.perf_counter()
        state, mets = compiled(state, batch)
        jax.block_until_ready(mets)
        ours.append(time.perf_counter() - t0)
      res = subprocess.run(cmd, capture_output=True, text=True, check=True)
      peer = json.loads(res.stdout.strip().splitlines()[-1])
      row = dict(round=r, load_1min=load, ours_step_s_p50=statistics.median(ours),
                 ours_step_s_min=min(ours), peer_step_s_p50=peer["step_ms"]["p50"] / 1e3,
                 peer_step_s_min=peer["step_ms"]["min"] / 1e3)
      row["ratio_p50"] = row["peer_step_s_p50"] / row["ours_step_s_p50"]
      rounds.append(row)
      print(f"round {r}: load {load:.2f}; ours p50 {row['ours_step_s_p50']:.2f} s "
            f"({B / row['ours_step_s_p50']:.2f} ex/s); ST-MEM p50 {row['peer_step_s_p50']:.2f} s "
            f"({B / row['peer_step_s_p50']:.2f} ex/s); ours/ST-MEM speed {row['ratio_p50']:.2f}",
            flush=True)
  summary = dict(
      size=_SIZE.value, batch=B, rounds=rounds, peer_command=cmd,
      median_ratio=statistics.median(r["ratio_p50"] for r in rounds),
      ratio_of_minima=(min(r["peer_step_s_min"] for r in rounds)
                       / min(r["ours_step_s_min"] for r in rounds)),
      load_after=os.getloadavg()[0], final_loss=float(np.asarray(mets["loss"])))
  print(f"median over rounds of (ours / ST-MEM examples/s): {summary['median_ratio']:.2f}; "
        f"ratio of the fastest steps: {summary['ratio_of_minima']:.2f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(summary, f, indent=2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["peer_python", "peer_script", "peer_dir"])
  cli.run(main)
