"""Test setup: CPU only, 8 fake devices so sharding code is really exercised, TF without GPUs.

Environment variables must be set before jax or tensorflow is imported anywhere.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
# Small real subset embedded in the repository (see tests/data/README.md).
EMBEDDED = REPO / "tests" / "data"
# The full shared data set, present on CI and development machines, absent on a fresh clone.
SHARED = pathlib.Path(os.environ.get("CGDMER_SHARED_DATA", REPO.parent / "shared" / "data"))


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
