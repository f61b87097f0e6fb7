"""ECG <-> report retrieval in the aligned space: Recall@K and median rank, with intervals.

The direct test of the contrastive space: on one split of a converted dataset with reports
(`data_pipelines.build`), every ECG and every report is embedded (`embedding`, unit norm) and
candidates are ranked by cosine similarity.

* **ECG -> report**: each record with a report is a query; the candidates are the split's
  distinct reports (texts identical after the converter's cleaning are one candidate, so
  identical reports are equally correct and a common report is not counted many times).
* **report -> ECG**: each distinct report is a query; the candidates are the split's ECGs with
  a report, and every ECG whose report is that text is correct.

A query's rank is 1 + the number of wrong candidates scored at least as high as its best
correct candidate (ties count against the model, so a constant embedding ranks last, not
first). Recall@K is the share of queries with rank <= K; chance is about K / candidates.
Intervals are 95 % percentile bootstraps over queries (`bootstrap.resample_counts`, seeded).
Similarities are computed in blocks of queries, so memory is O(block x candidates), and ECGs
are embedded batch by batch from the stream: a split is never held as signals.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cgdmer_jax import progress as progress_lib
from cgdmer_jax.data import reader
from cgdmer_jax.evaluators import bootstrap
from cgdmer_jax.evaluators import leads as leads_lib

KS = (1, 5, 10)
TASK = "retrieval"
_BLOCK = 512


def ranks(query_NxE: np.ndarray, cand_MxE: np.ndarray, correct_fn) -> np.ndarray:
  """Rank of each query's best correct candidate (1 = first), ties counted against it.

  Args:
    query_NxE: query embeddings; cand_MxE: candidate embeddings (cosine = dot: unit norm).
    correct_fn: (query indices [b]) -> bool [b, M], True where a candidate is correct.

  Returns:
    int64 [N] ranks.
  """
  out = np.empty(len(query_NxE), np.int64)
  for start in range(0, len(query_NxE), _BLOCK):
    idx = np.arange(start, min(start + _BLOCK, len(query_NxE)))
    s = np.asarray(query_NxE[idx], np.float64) @ np.asarray(cand_MxE, np.float64).T
    ok = correct_fn(idx)
    if not ok.any(1).all():
      raise ValueError("a retrieval query has no correct candidate")
    best = np.where(ok, s, -np.inf).max(1, keepdims=True)
    out[idx] = 1 + np.sum(~ok & (s >= best), axis=1)
  return out


def _weighted_median(values: np.ndarray, counts_BxN: np.ndarray) -> np.ndarray:
  order = np.argsort(values, kind="stable")
  cw = np.cumsum(counts_BxN[:, order], axis=1)
  pos = np.argmax(cw >= cw[:, -1:] / 2, axis=1)
  return values[order][pos].astype(np.float64)


def summarize(rank_N: np.ndarray, candidates: int, resamples: int, seed: int) -> dict:
  """Recall@K, median and mean rank of one direction, each with its bootstrap interval."""
  rank_N = np.asarray(rank_N)
  counts = bootstrap.resample_counts(len(rank_N), resamples, seed).astype(np.float64)
  lo, hi = (1 - bootstrap.LEVEL) / 2, 1 - (1 - bootstrap.LEVEL) / 2

  def stat(point, draws):
    return {"value": float(point), "interval": [float(np.quantile(draws, lo)),
                                                float(np.quantile(draws, hi))]}

  out = {"queries": int(len(rank_N)), "candidates": int(candidates)}
  for k in KS:
    hit = (rank_N <= k).astype(np.float64)
    out[f"recall@{k}"] = stat(hit.mean(), counts @ hit / len(rank_N))
    out[f"chance@{k}"] = min(1.0, k / candidates)
  out["median_rank"] = stat(np.median(rank_N), _weighted_median(rank_N, counts))
  out["mean_rank"] = stat(rank_N.mean(), counts @ rank_N / len(rank_N))
  return out


def embed_split(encoder, data_dir, split: str, *, keep_leads: np.ndarray | None = None,
                progress: bool = True) -> tuple[np.ndarray, list[str], int]:
  """ECG embeddings and report texts of the records of `split` that have a report.

  Returns:
    (embeddings [N, E], reports [N], records without a report that were left out).
  """
  info = reader.load_info(data_dir)
  if info.fs != encoder.fs or abs(info.seconds - encoder.seconds) > 1e-6:
    raise ValueError(f"{data_dir} holds {info.fs} Hz x {info.seconds:g} s records, the model "
                     f"takes {encoder.fs} Hz x {encoder.seconds:g} s: build the dataset with "
                     f"--fs={encoder.fs} --seconds={encoder.seconds:g}")
  if split not in info.split_sizes:
    raise ValueError(f"{data_dir} has no {split!r} split (splits: {sorted(info.split_sizes)})")
  emb, texts, no_report = [], [], 0
  total = reader.eval_batch_count(info, split, encoder.batch_size, 1)
  batches = reader.eval_batches(data_dir, split=split, global_batch_size=encoder.batch_size,
                                process_index=0, process_count=1, with_reports=True)
  for batch in progress_lib.bar(batches, total=total, desc=f"retrieval {encoder.name}",
                                unit="batch", disable=not progress):
    use = batch["mask"] & batch["has_report"]
    no_report += int(np.sum(batch["mask"] & ~batch["has_report"]))
    if keep_leads is not None:
      ecg, lead_mask = leads_lib.apply(batch["ecg"], batch["lead_mask"], keep_leads)
      use &= lead_mask.any(1)
    else:
      ecg, lead_mask = batch["ecg"], batch["lead_mask"]
    if not use.any():
      continue
    out = encoder.embed_ecg(ecg[use], batch["valid_len"][use], lead_mask[use])
    emb.append(out["embedding"])
    texts += [str(t) for t in batch["report"][use]]
  if not texts:
    raise ValueError(f"the {split} split of {data_dir} has no record with a report")
  return np.concatenate(emb), texts, no_report


def evaluate(encoder, data_dir, split: str, *, resamples: int = bootstrap.NUM_RESAMPLES,
             seed: int = 0, leads: Sequence[str] = leads_lib.ALL, progress: bool = True
             ) -> dict:
  """Retrieval in both directions on `split` of the converted dataset `data_dir`.

  Returns:
    JSON-ready {"data", "split", "records", "distinct_reports", "no_report",
    "ecg_to_report": summarize(...), "report_to_ecg": summarize(...)}, or {"reason"} for a
    model without a report tower.
  """
  if encoder.text_fn is None:
    return {"reason": "model has no report tower"}
  keep = None if leads_lib.is_all(leads) else leads_lib.keep_mask(leads)
  ecg_emb, texts, no_report = embed_split(encoder, data_dir, split, keep_leads=keep,
                                          progress=progress)
  distinct, group = np.unique(np.asarray(texts), return_inverse=True)
  rep_emb = encoder.embed_text(list(distinct))["embedding"]
  e2r = ranks(ecg_emb, rep_emb, lambda q: group[q][:, None] == np.arange(len(distinct)))
  r2e = ranks(rep_emb, ecg_emb, lambda q: q[:, None] == group[None, :])
  return {"data": str(data_dir), "split": split, "records": int(len(texts)),
          "distinct_reports": int(len(distinct)), "no_report": no_report,
          "ecg_to_report": summarize(e2r, len(distinct), resamples, seed),
          "report_to_ecg": summarize(r2e, len(texts), resamples, seed + 1)}


def _cell(stat: dict, scale: float = 100.0, digits: int = 1) -> str:
  lo, hi = stat["interval"]
  return f"{scale * stat['value']:.{digits}f} ({scale * lo:.{digits}f}–{scale * hi:.{digits}f})"


def markdown(all_results: Sequence[dict]) -> str:
  """The retrieval table of the models that have one ('' when none has)."""
  rows = [(r["model"], r[TASK]) for r in all_results if r.get(TASK)]
  if not rows:
    return ""
  head = " | ".join(f"R@{k}" for k in KS)
  lines = ["| model | direction | " + head + " | median rank | queries | candidates |",
           "|---|---|" + "---|" * (len(KS) + 3)]
  for model, res in rows:
    if res.get("reason"):
      lines.append(f"| {model} | – | " + " | ".join("–" * 1 for _ in KS) + " | – | – | – |")
      continue
    for key, name in (("ecg_to_report", "ECG → report"), ("report_to_ecg", "report → ECG")):
      d = res[key]
      cells = " | ".join(_cell(d[f"recall@{k}"]) for k in KS)
      lines.append(f"| {model} | {name} | {cells} | {_cell(d['median_rank'], 1, 0)} | "
                   f"{d['queries']} | {d['candidates']} |")
  first = rows[0][1]
  where = f"the {first.get('split')} split of {first.get('data')}" if "data" in first else ""
  lines += ["", f"Retrieval on {where}: Recall@K x 100 and median rank (95 % bootstrap "
            "interval over queries). ECG → report: every record with a report queries the "
            "distinct reports (identical texts are one candidate); report → ECG: every "
            "distinct report queries the ECGs, each ECG with that text correct. Ties count "
            "against the model; chance Recall@K is about K / candidates."]
  return "\n".join(lines) + "\n"
