"""Test setup: CPU only, 8 fake devices so sharding code is really exercised, TF without GPUs.

Environment variables must be set before jax or tensorflow is imported anywhere.
"""

import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA:CPU compiles of the same programs recur across tests, xdist workers and the
# subprocesses some tests start: a persistent compilation cache shares them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"cgdmer_jax_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest

from cgdmer_jax import quickstart
from configs import pretrain
from data_pipelines import signal
from data_pipelines import write
from tests import fake_remote

REPO = pathlib.Path(__file__).resolve().parents[1]
# Small real subset embedded in the repository (see tests/data/README.md).
EMBEDDED = REPO / "tests" / "data"
# The full shared data set, present on CI and development machines, absent on a fresh clone.
SHARED = pathlib.Path(os.environ.get("CGDMER_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(items):
  """Slow tests first (a stable sort): pytest-xdist hands tests out in collection order, and a
  long test handed out last leaves the other worker idle until it ends."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


QUICK_PATHS = ("data", "pretrain", "eval", "export")
QUICK_WAIT_S = 1800


def _run_quickstart(workdir: pathlib.Path) -> dict:
  out = quickstart.run(workdir, EMBEDDED, pretrain.get_config("size=tiny"), steps=10,
                       probe_epochs=3, fractions=(0.01, 0.1, 1.0))
  return {k: out[k] for k in QUICK_PATHS} | {"plots": out["plots"]}


@pytest.fixture(scope="session")
def quick(tmp_path_factory, worker_id) -> dict:
  """The quickstart, shortened (10 steps of the tiny model): a trained workdir with its
  evaluation and export, shared by the tests that need a trained model (which only read it).

  Under pytest-xdist the first worker to ask builds it in the run's shared temporary folder
  and the others wait for it (pytest-xdist's recipe for a once-per-run fixture; `mkdir` is
  the lock), so it is trained once per run, not once per worker.
  """
  if worker_id == "master":
    return _run_quickstart(tmp_path_factory.mktemp("quickstart"))
  root = tmp_path_factory.getbasetemp().parent
  done, failed = root / "quickstart.json", root / "quickstart.failed"
  try:
    (root / "quickstart.lock").mkdir()
  except FileExistsError:
    deadline = time.monotonic() + QUICK_WAIT_S
    while not done.exists():
      if failed.exists():
        pytest.fail(f"the shared quickstart fixture failed in another worker: {failed.read_text()}")
      if time.monotonic() > deadline:
        pytest.fail(f"the shared quickstart fixture was not ready after {QUICK_WAIT_S} s")
      time.sleep(1)
    stored = json.loads(done.read_text())
    return {k: pathlib.Path(stored[k]) for k in QUICK_PATHS} | {"plots": stored["plots"]}
  try:
    (root / "quickstart").mkdir(exist_ok=True)
    out = _run_quickstart(root / "quickstart")
  except BaseException as e:
    failed.write_text(f"{type(e).__name__}: {e}")
    raise
  tmp = root / "quickstart.json.tmp"
  tmp.write_text(json.dumps(out, default=str))  # paths as strings
  tmp.rename(done)  # atomic: a waiting worker never reads half a file
  return out


@pytest.fixture(scope="session")
def embedded_data() -> pathlib.Path:
  return EMBEDDED


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The full shared data folder; skips the test with a message where it is absent."""
  if not (SHARED / "ptbxl" / "ptbxl_database.csv").exists():
    pytest.skip(f"full shared data set not found at {SHARED} "
                "(set CGDMER_SHARED_DATA to its path to run this test)")
  return SHARED


@pytest.fixture(scope="session")
def ptbxl_tfrecords(tmp_path_factory) -> pathlib.Path:
  """The embedded PTB-XL subset converted at 100 Hz (4 train shards: enough for 2 processes)."""
  out = tmp_path_factory.mktemp("ptbxl_tfrecords")
  write.build(write.BuildConfig(
      source="ptbxl", input=str(EMBEDDED / "ptbxl"), output=str(out),
      signal=signal.Config(fs=100, seconds=10.0), shards=4, vocab_size=400, workers=1,
      progress=False))
  return out


@pytest.fixture
def store(tmp_path, monkeypatch):
  """A stand-in bucket (`tests/fake_remote.py`): its root URL; nothing may land locally under
  a mangled name."""
  monkeypatch.chdir(tmp_path)  # a mangled relative path would land here
  with fake_remote.object_store(tmp_path / "bucket") as root:
    yield root
  assert not fake_remote.local_names_with_scheme(tmp_path), "written under a mangled name"
