r"""Embeds WFDB records (and optionally report strings) with an exported or trained model.

  python -m cgdmer_jax.embed --model=EXPORT_OR_WORKDIR --input=DIR_OR_LIST \
      --out=embeddings.npy [--features=embedding] [--texts=reports.txt]

`--input` is a folder (every WFDB record under it, plus header-less CPSC `.mat` files) or a
text file with one record path per line (relative to the file, extension optional). Each
record is read and canonicalised by the converter's own code (`data_pipelines.locate`) at
the model's sampling rate and length. Outputs:

  embeddings.npy        float32 [N_ok, D]: the chosen feature of every record that was read
  embeddings.index.csv  one row per input record: row (into the .npy, -1 when failed),
                        record, status (ok | failed), reason, valid_len, leads
  --texts: texts.npy    float32 [N_texts, D] embeddings of the lines of the text file

Bad records never stop the run: each gets a `failed` row with the reason and a message.
Exit status: 0 every record embedded; 3 some records failed (the others are embedded, the
index says which failed and why); 2 bad usage (missing model or input, no record found);
1 an unexpected error.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile

import numpy as np
from absl import flags
from etils import epath

from cgdmer_jax import cli
from cgdmer_jax import progress
from data_pipelines import locate

# main() sets TF_CPP_MIN_LOG_LEVEL before JAX starts, so it imports `inference` (and with it
# JAX) inside.

_MODEL = flags.DEFINE_string("model", None, "Export folder (cgdmer_jax.export) or training "
                             "workdir.")
_INPUT = flags.DEFINE_string("input", None, "Folder of records, or a text file listing them.")
_OUT = flags.DEFINE_string("out", "embeddings.npy", "Output .npy; the index CSV goes beside it.")
_FEATURES = flags.DEFINE_enum(
    "features", "embedding", ["embedding", "probe", "shared", "specific"],
    "Which ECG output: 'embedding' (unit-norm, the zero-shot space), 'probe' (the linear-"
    "probing feature), or the pooled 'shared'/'specific' features.")
_TEXTS = flags.DEFINE_string("texts", None, "Optional text file: one report per line, embedded "
                             "into <out stem>.texts.npy.")
_MIN_LEADS = flags.DEFINE_integer(
    "min_leads", 12, "Records with fewer standard leads fail (as in the converter's default); "
    "lower it to embed partial-lead records with the missing leads masked.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Records per forward pass.")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED = cli.OK, cli.ERROR, cli.USAGE, 3
INDEX_COLUMNS = ("row", "record", "status", "reason", "valid_len", "leads")


@contextlib.contextmanager
def _local_file(out: epath.Path):
  """A local path to write `out` through: itself, or (object storage) a temporary file that
  is uploaded when the block ends without error."""
  if "://" not in os.fspath(out):
    yield out
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = epath.Path(tmp) / out.name
    yield local
    with local.open("rb") as src, out.open("wb") as dst:
      shutil.copyfileobj(src, dst, 16 << 20)


def embed_records(encoder, locs, out: str | os.PathLike, *, feature: str = "embedding",
                  min_leads: int = 12, show_progress: bool = True) -> list[dict]:
  """Reads, embeds and writes `out` (.npy) and its index CSV; returns the index rows.

  Streams: records are read and embedded one batch at a time into a memory-mapped file (on
  local disk; uploaded at the end when `out` is on object storage), so a folder of any size
  needs the memory of one batch.
  """
  out = epath.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with _local_file(out) as local:
    rows = _embed_to(encoder, locs, local, feature=feature, min_leads=min_leads,
                     show_progress=show_progress)
  text = io.StringIO()
  w = csv.DictWriter(text, fieldnames=INDEX_COLUMNS)
  w.writeheader()
  w.writerows(rows)
  index_path(out).write_text(text.getvalue())
  return rows


def _embed_to(encoder, locs, out: epath.Path, *, feature: str, min_leads: int,
              show_progress: bool) -> list[dict]:
  reader = locate.CanonicalReader(encoder.signal_config(min_leads=min_leads))
  tmp = out.with_name(out.name + ".partial")
  rows: list[dict] = []
  buffer: list = []
  store = None
  n_ok = 0

  def flush():
    nonlocal store, n_ok
    if not buffer:
      return
    outs = encoder.embed_ecg(np.stack([c.millivolts for c in buffer]),
                             np.asarray([c.valid_len for c in buffer]),
                             np.stack([c.lead_mask for c in buffer]))
    emb = outs[feature].astype(np.float32)
    if store is None:
      store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(len(locs), emb.shape[1]))
    store[n_ok:n_ok + len(emb)] = emb
    n_ok += len(emb)
    buffer.clear()

  for loc, canon, reason in progress.bar(reader.read_many(locs), total=len(locs), desc="embed",
                                        unit="rec", disable=not show_progress):
    if canon is None:
      print(f"failed: {loc.path}: {reason}", file=sys.stderr)
      rows.append(dict(row=-1, record=loc.path, status="failed", reason=reason, valid_len="",
                       leads=""))
      continue
    rows.append(dict(row=n_ok + len(buffer), record=loc.path, status="ok", reason="",
                     valid_len=canon.valid_len, leads=int(canon.lead_mask.sum())))
    buffer.append(canon)
    if len(buffer) == encoder.batch_size:
      flush()
  flush()
  # Keep only the rows of embedded records (the map was sized for every input).
  final = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32,
                                    shape=(n_ok, 0 if store is None else store.shape[1]))
  for start in range(0, n_ok, 65536):
    stop = min(start + 65536, n_ok)
    final[start:stop] = store[start:stop]
  final.flush()
  del final, store
  if tmp.exists():
    tmp.unlink()
  return rows


def index_path(out: epath.Path) -> epath.Path:
  return out.with_name(out.stem + ".index.csv")


def main(argv) -> int:
  del argv
  cli.quiet_start()
  from cgdmer_jax import inference

  out = epath.Path(_OUT.value)  # local or object storage alike
  if out.suffix != ".npy":
    return cli.fail(f"--out must end in .npy, got {out}", EXIT_USAGE)
  try:
    encoder = inference.load(_MODEL.value, batch_size=_BATCH.value)
    locs = locate.read_inputs(_INPUT.value)
  except (FileNotFoundError, ValueError) as e:
    return cli.fail(str(e), EXIT_USAGE)
  if not locs:
    return cli.fail(f"no ECG record found in {_INPUT.value}", EXIT_USAGE)
  rows = embed_records(encoder, locs, out, feature=_FEATURES.value, min_leads=_MIN_LEADS.value)
  failed = sum(r["status"] == "failed" for r in rows)
  print(f"embedded {len(rows) - failed} of {len(rows)} records -> {out} "
        f"(index: {index_path(out)}); {failed} failed")
  if _TEXTS.value:
    lines = [ln.strip() for ln in epath.Path(_TEXTS.value).read_text().splitlines()
             if ln.strip()]
    texts_out = out.with_name(out.stem + ".texts.npy")
    with texts_out.open("wb") as f:
      np.save(f, encoder.embed_text(lines)["embedding"].astype(np.float32),
              allow_pickle=False)
    print(f"embedded {len(lines)} texts -> {texts_out}")
  return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
  flags.mark_flags_as_required(["model", "input"])
  cli.run(main)
