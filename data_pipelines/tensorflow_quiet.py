"""TensorFlow as this project uses it: a CPU-only data tool, imported without its banner.

Importing TensorFlow 2.21 writes from C++, twice, "All log messages before
absl::InitializeLog() is called are written to STDERR" and "oneDNN custom operations are on
...", whatever `TF_CPP_MIN_LOG_LEVEL` says. `load()` imports it with the process's stderr
(file descriptor 2) captured, writes back every other line it printed, and hides the GPUs from
it so that it never takes accelerator memory from JAX. Commands and converter workers call it
before anything else imports TensorFlow; later imports find it loaded.
"""

from __future__ import annotations

import os
import sys
import tempfile

_BANNER = ("All log messages before absl::InitializeLog() is called",
           "oneDNN custom operations are on")


def load():
  """The `tensorflow` module, imported quietly on first use (see the module docstring)."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"]
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # noqa: PLC0415 (the import this module exists to wrap)
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
        if not any(b in line for b in _BANNER):
          sys.stderr.write(line)
      sys.stderr.flush()
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised by someone else: only the GPUs it saw matter
    pass
  return tf
