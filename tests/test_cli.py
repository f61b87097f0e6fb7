"""One command-line convention (cgdmer_jax/cli.py): `--help` exits 0 with the command's flags,
a usage error exits 2 with one `error:` line naming the fix (one process per command, run in
parallel)."""

import os
import pathlib
import subprocess
import sys

import pytest

from cgdmer_jax import cli
from cgdmer_jax import export
from cgdmer_jax import inference
from cgdmer_jax.evaluators import runner

REPO = pathlib.Path(__file__).resolve().parents[1]

# Command -> flags its help must describe.
COMMANDS = {
    "cgdmer_jax.main": ("--config", "--workdir"),
    "cgdmer_jax.evaluate": ("--tasks", "--random_init", "--leads", "--retrieval_data"),
    "cgdmer_jax.finetune": ("--workdir", "--layer_decay", "--labels_csv", "--leads"),
    "cgdmer_jax.diagnose": ("--workdir", "--split"),
    "cgdmer_jax.export": ("--workdir", "--overwrite"),
    "cgdmer_jax.embed": ("--model", "--input"),
    "cgdmer_jax.benchmark": ("--devices", "--ablation"),
    "cgdmer_jax.perf.gpu_check": ("--out_dir", "--dry_run", "--peer_dir"),
    "cgdmer_jax.perf.stmem_compare": ("--size", "--rounds"),
    "cgdmer_jax.quickstart": ("--workdir", "--steps"),
    "data_pipelines.build": ("--source", "--output"),
    "data_pipelines.verify": ("--data_dir",),
    "data_pipelines.throughput": ("--input", "--resume_steps"),
}
ENV = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")


def _run_all(args_of):
  procs = {m: subprocess.Popen([sys.executable, "-m", m, *args_of(m)], cwd=REPO, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for m in COMMANDS}
  out = {}
  for m, p in procs.items():
    stdout, stderr = p.communicate(timeout=300)
    out[m] = (p.returncode, stdout, stderr)
  return out


def _error_lines(err: str) -> list[str]:
  return [line for line in err.splitlines() if line.startswith("error:")]


def test_every_command_answers_help_with_status_0():
  failures = []
  for module, (status, out, err) in _run_all(lambda m: ["--help"]).items():
    missing = [f for f in COMMANDS[module] if f not in out]
    if status != cli.OK or missing or "Traceback" in err:
      failures.append(f"{module}: status {status}, missing {missing}\n{err[-2000:]}")
  assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_every_command_exits_2_on_a_usage_error_with_one_line():
  failures = []
  for module, (status, _, err) in _run_all(lambda m: ["--no_such_flag=1"]).items():
    lines = _error_lines(err)
    if status != cli.USAGE or len(lines) != 1 or "no_such_flag" not in lines[0] or (
        "Traceback" in err):
      failures.append(f"{module}: status {status}, error lines {lines}\n{err[-1500:]}")
  assert not failures, "\n".join(failures)


@pytest.mark.parametrize("args, expect", [
    (["--config=configs/pretrain.py:size=tiny", "--config.optim.learning_rate=3e-4"],
     "no key 'optim.learning_rate'; keys under optim: optim.b1"),
    (["--config=configs/pretrain.py", "--config.optimm.lr=3"], "did you mean optim.lr"),
    (["--config=configs/nope.py"], "no config file 'configs/nope.py'"),
    (["--config=configs/pretrain.py:size=huge"], "unknown size 'huge'"),
    (["--config=configs/pretrain.py", "--config.data.dir=/no/such/folder"],
     "/no/such/folder is not a converted dataset"),
])
def test_training_usage_errors_name_the_fix(tmp_path, args, expect):
  res = subprocess.run([sys.executable, "-m", "cgdmer_jax.main", f"--workdir={tmp_path}/w",
                        *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  lines = _error_lines(res.stderr)
  assert res.returncode == cli.USAGE, res.stderr[-2000:]
  assert len(lines) == 1 and expect in lines[0], lines
  assert "Traceback" not in res.stderr
  assert "oneDNN" not in res.stderr and "InitializeLog" not in res.stderr  # no TF banner


def test_close_matches_for_a_misspelt_key():
  with pytest.raises(cli.UsageError, match="did you mean optim.warmup_steps"):
    cli.check_config_flags(["prog", "--config=configs/pretrain.py",
                            "--config.optim.warmup_step=3"])
  cli.check_config_flags(["prog", "--config=configs/pretrain.py:size=tiny",
                          "--config.loss.ramp_steps.disentangle=20"])  # nested keys are known


def test_a_wrong_model_folder_is_named_for_what_it_is(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    inference.load(tmp_path / "nope")
  (tmp_path / "run" / "checkpoints" / "200").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="not an export .* and not a training workdir .*"
                                               "a checkpoints folder: pass the workdir above"):
    inference.load(tmp_path / "run" / "checkpoints")
  (tmp_path / "run" / "checkpoints" / "200" / "params").mkdir()
  with pytest.raises(FileNotFoundError, match="a checkpoint step"):
    inference.load(tmp_path / "run" / "checkpoints" / "200")


def test_evaluation_data_root_one_level_too_deep_names_its_parent(tmp_path):
  (tmp_path / "ptbxl").mkdir()
  (tmp_path / "ptbxl" / "ptbxl_database.csv").write_text("ecg_id\n")
  with pytest.raises(FileNotFoundError, match="is the ptbxl folder; --data_root is its parent"):
    runner.evaluate_models([str(tmp_path / "run")], task_names=["ptbxl_super"],
                           fractions=[1.0], data_root=str(tmp_path / "ptbxl"))


def _build(tmp_path, *args):
  return subprocess.run([sys.executable, "-m", "data_pipelines.build", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=600)


def test_build_refuses_a_nonpositive_rate(tmp_path):
  res = _build(tmp_path, "--source=ptbxl", f"--input={REPO}/tests/data/ptbxl",
               f"--output={tmp_path}/out", "--fs=0")
  assert res.returncode == cli.USAGE and _error_lines(res.stderr) == [
      "error: --fs must be a positive sampling rate in Hz, got 0"], res.stderr[-2000:]
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_build_says_when_it_upsamples_and_fails_when_nothing_is_written(tmp_path):
  res = _build(tmp_path, "--source=ptbxl", f"--input={REPO}/tests/data/ptbxl",
               f"--output={tmp_path}/up", "--fs=500", "--workers=1", "--noprogress")
  assert res.returncode == cli.OK, res.stderr[-2000:]
  assert "input sampling rates: 100 Hz (240 records)" in res.stdout
  assert "warning: 240 records were upsampled to 500 Hz from 100 Hz" in res.stderr
  assert "--ptbxl_hr" in res.stderr
  assert "oneDNN" not in res.stderr  # TensorFlow's banner, in the command or its workers
  # A folder whose only record cannot be read: listed, rejected, nothing written.
  bad = tmp_path / "bad"
  bad.mkdir()
  src = REPO / "tests" / "data" / "ptbxl" / "records100" / "00000"
  hea = sorted(src.glob("*.hea"))[0]
  (bad / hea.name).write_text(hea.read_text())
  (bad / hea.with_suffix(".dat").name).write_bytes(b"\0" * 10)  # cut short
  res = _build(tmp_path, "--source=wfdb_dir", f"--input={bad}", f"--output={tmp_path}/none",
               "--fs=100", "--workers=1", "--noprogress", "--split=hash")
  lines = _error_lines(res.stderr)
  assert res.returncode == cli.ERROR and len(lines) == 1, res.stderr[-2000:]
  assert lines[0].startswith("error: nothing was written: 1 records listed")


def test_export_overwrite_deletes_an_export_only(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(
      (REPO / "tests" / "data" / "legacy_workdir" / "config.json").read_text())
  mine = tmp_path / "my_folder"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="is not empty; pass --overwrite"):
    export.export_model(run, mine)
  with pytest.raises(FileExistsError, match="replaces an export only; .* nothing in it was "
                                            "deleted"):
    export.export_model(run, mine, overwrite=True)
  assert (mine / "notes.txt").read_text() == "keep me"
  with pytest.raises(FileNotFoundError, match="does not exist"):
    export.export_model(tmp_path / "no_run", tmp_path / "out")
