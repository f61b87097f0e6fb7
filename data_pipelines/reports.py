"""Free-text report cleaning, applied to every report before tokenizer training and storage.

`clean_report` runs these steps in order:

1. **Join** multi-part reports (MIMIC-IV-ECG `report_0..report_17`) with ' ', skipping empty
   and missing (NaN/None) parts (`join_parts`).
2. **Unicode NFKC** normalisation (non-breaking spaces, full-width and compatibility forms).
3. **Lower-case** (PTB-XL writes umlauts upper-case inside lower-case words: `ischÄmie`).
4. **Annotator edits removed**: PTB-XL appends `Edit: <SCP codes>` (e.g. `Edit: NORM 100,
   (NDT)`) to some reports; these are the labels of the validating cardiologist, so everything
   from `edit:` to the end is dropped to keep labels out of the text.
5. **Unconfirmed-report markers removed**: PTB-XL's `4.46 unbestätigter bericht` (device
   software version + "unconfirmed report", often truncated by the CSV field length, e.g.
   `4.46    unbestät` or `4.46 u`), a bare trailing `4.46`, and `unbestätigter bericht`,
   `unconfirmed report`, `report unconfirmed` anywhere. `alter unbest.` ("age undetermined",
   of an infarct) is clinical content and kept.
6. **Decoration removed**: every `*` (MIMIC `*** ... ***` banners) and runs of two or more of
   `=`, `-`, `_`, `~`, `#` (`--- ... ---` rules); single hyphens (`a-v block`) stay.
7. **Whitespace** collapsed to single spaces and stripped.

The result may be '' (no report, or only boilerplate); an empty report is stored as all
padding with `report_len` 0.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable

_EDIT = re.compile(r"\bedit:.*$", re.DOTALL)
_VERSION_MARKER = re.compile(r"(^|\s)\d\.\d\d\s+u[a-zäöü]*(\s+b[a-zäöü]*)?\s*$")
_BARE_VERSION = re.compile(r"(^|\s)4\.46\s*$")
_MARKERS = re.compile(r"unbestätigter bericht|unconfirmed report|report unconfirmed")
_DECORATION = re.compile(r"\*+|[=\-_~#]{2,}")
_SPACE = re.compile(r"\s+")


def join_parts(parts: Iterable[object]) -> str:
  """Joins report parts with ' ', skipping None, NaN and blank parts.

  Args:
    parts: strings (or None/NaN from a CSV).

  Returns:
    The joined text (not yet cleaned).
  """
  out = []
  for part in parts:
    if part is None or (isinstance(part, float) and math.isnan(part)):
      continue
    text = str(part).strip()
    if text:
      out.append(text)
  return " ".join(out)


def clean_report(report: str | Iterable[object] | None) -> str:
  """Cleans one report (steps in the module docstring).

  Args:
    report: the raw text, or its parts (joined first), or None.

  Returns:
    The cleaned, lower-case text; '' when nothing is left.
  """
  if report is None:
    return ""
  text = report if isinstance(report, str) else join_parts(report)
  text = unicodedata.normalize("NFKC", text).lower()
  text = _EDIT.sub(" ", text)
  text = _VERSION_MARKER.sub(" ", text)
  text = _BARE_VERSION.sub(" ", text)
  text = _MARKERS.sub(" ", text)
  text = _DECORATION.sub(" ", text)
  return _SPACE.sub(" ", text).strip()
