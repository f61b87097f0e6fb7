"""Progress of long work: a tqdm bar on a terminal, plain periodic lines in a log file.

tqdm redraws one line with carriage returns, which a log file (a SLURM output, a k8s log)
keeps as a single unreadable line. `bar` gives the same tqdm object either way; when stderr
is not a terminal each refresh is written as its own line, at most every `log_every_s`.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

# Seconds between two lines of a progress bar in a log file.
LOG_EVERY_S = 30.0


class _Lines:
  """A file for tqdm that turns each redraw into one newline-terminated line."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> None:
    text = text.replace("\r", "").strip()
    if text:
      self._stream.write(text + "\n")

  def flush(self) -> None:
    self._stream.flush()


def is_terminal(stream=None) -> bool:
  stream = sys.stderr if stream is None else stream
  return bool(getattr(stream, "isatty", lambda: False)())


def bar(iterable=None, *, log_every_s: float = LOG_EVERY_S, **kwargs) -> tqdm:
  """`tqdm(iterable, **kwargs)` on a terminal; periodic plain lines otherwise.

  Args:
    iterable: as tqdm's.
    log_every_s: seconds between lines when stderr is not a terminal.
    **kwargs: tqdm's arguments (desc, total, unit, disable, ...).
  """
  if is_terminal():
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
  kwargs.update(file=_Lines(sys.stderr), mininterval=log_every_s, maxinterval=log_every_s,
                ascii=True, ncols=100, dynamic_ncols=False)
  return tqdm(iterable, **kwargs)
