"""The model card of an export: machine-readable fields of export_info.json, MODEL_CARD.md
rendered from them, and a model-hub folder (`publish`).

JAX (and `inference`, which imports it) is imported inside the functions that need it: `export`
imports this module at its top, before its main() sets up the environment JAX starts in.

Everything comes from what `export` knows: the config, the checkpoint, the exported functions'
output shapes, the workdir's `eval/summary.json` and CITATION.cff; nothing is typed by hand.
"""

from __future__ import annotations

import json
import os

import yaml
from etils import epath

from cgdmer_jax.evaluators import report

LICENSE = "Apache-2.0"
CITATION_FALLBACK = "Niu et al., CG-DMER, arXiv:2602.21154"
_REPO = epath.Path(__file__).resolve().parents[1]
_NORMALISATION = {
    "none": "none: the encoder sees the millivolts as given",
    "zscore": "per-record, per-lead z-score over the first valid_len samples",
}


def dims(exported) -> dict[str, int]:
  """{output name: feature dimension} of an exported function returning a dict."""
  import jax
  outs = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  return {k: int(v.shape[-1]) for k, v in outs.items()}


def citation(cff: str | os.PathLike | None = None) -> str:
  """The preferred citation of CITATION.cff as one line; the fallback when it is unreadable."""
  path = epath.Path(cff) if cff else _REPO / "CITATION.cff"
  try:
    pref = yaml.safe_load(path.read_text())["preferred-citation"]
    authors = ", ".join(f"{a.get('given-names', '')} {a['family-names']}".strip()
                        for a in pref["authors"])
    ident = next((i["value"] for i in pref.get("identifiers", [])), "")
    title = " ".join(str(pref["title"]).split())
    parts = [f"{authors}. {title}.", f"{pref.get('journal', '')}, {pref.get('year', '')}.",
             f"{ident}." if ident else "", pref.get("url", "")]
    return " ".join(p for p in parts if p)
  except (ImportError, OSError, KeyError, TypeError, ValueError):
    return CITATION_FALLBACK


def evaluation_of(workdir: epath.Path) -> dict:
  """The measured numbers of `<workdir>/eval/summary.json`, or why there are none."""
  path = workdir / "eval" / "summary.json"
  if not path.is_file():
    return {"found": False, "looked_in": str(path)}
  try:
    rows = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    return {"found": False, "looked_in": str(path), "reason": f"unreadable: {e}"}
  models = {}
  for r in rows:
    models[r["model"]] = {
        "split": r.get("split"),
        "tasks": {t: {m: {"auc": c.get("auc"), "interval": c.get("interval")}
                      for m, c in cells.items() if c.get("auc") is not None}
                  for t, cells in r.get("tasks", {}).items()}}
  this = workdir.name if workdir.name in models else next(iter(models), None)
  return {"found": True, "source": str(path), "model": this, "models": models,
          "metric": "macro ROC-AUC",
          "interval": "95% bootstrap interval over the evaluated split's records"}


def _text_kind(config) -> str:
  """The report tower: 'transformer' or 'bert' (the config is upgraded: `model.text` is set)."""
  return str(config.model.text.kind)


def card_fields(config, workdir: epath.Path, info: dict, *, ecg_dims: dict[str, int],
                text_dims: dict[str, int] | None) -> dict:
  """The model card's machine-readable fields (added to export_info.json)."""
  n = info["num_samples"]
  text = None
  if text_dims is not None:
    text = {"ids": f"int32[batch, {info['max_report_len']}] token ids of "
                   f"{info['tokenizer']}", "len": "int32[batch] tokens used",
            "cleaning": "data_pipelines.reports.clean_report, then the tokenizer"}
  return {
      "input": {
          "ecg": f"float32[batch, {len(info['leads'])}, {n}]", "units": "mV",
          "fs": info["fs"], "seconds": info["seconds"], "num_samples": n,
          "lead_order": info["leads"],
          "valid_len": "int32[batch]: samples before zero padding",
          "lead_mask": f"bool[batch, {len(info['leads'])}]: True where the lead was recorded",
          "normalisation": _NORMALISATION.get(str(info["normalize"]), str(info["normalize"])),
          "normalisation_inside_model": True,
          "canonicalisation": "data_pipelines.signal.canonicalize (leads by name, resample to "
                              f"{info['fs']} Hz, first {info['seconds']:g} s, int16 uV, "
                              "crop/zero-pad)",
          "text": text,
      },
      "outputs": {"ecg": ecg_dims, "text": text_dims},
      "training": {"data_dir": str(config.data.dir), "step": info["step"],
                   "total_steps": int(config.total_steps),
                   "size": str(config.model.size), "variant": info["variant"],
                   "text_encoder": _text_kind(config) if info["has_text_encoder"] else None},
      "evaluation": evaluation_of(workdir),
      "license": LICENSE,
      "citation": citation(),
  }


def model_card(info: dict) -> str:
  """MODEL_CARD.md of an export, written from its export_info fields only."""
  i, t, ev = info["input"], info["training"], info["evaluation"]
  out_rows = [f"| ecg | {k} | {d} |" for k, d in info["outputs"]["ecg"].items()]
  if info["outputs"]["text"]:
    out_rows += [f"| report | {k} | {d} |" for k, d in info["outputs"]["text"].items()]
  lines = [
      f"# CG-DMER ECG encoder ({t['size']}, variant {t['variant']}, step {t['step']})", "",
      "ECG and report encoders pretrained with CG-DMER (contrastive-generative disentangled "
      "multimodal ECG representation learning), exported by `cgdmer_jax.export`.", "",
      "## Use", "", "```python", "import cgdmer_jax",
      'enc = cgdmer_jax.load("THIS_FOLDER")',
      'emb = enc.embed_ecg(x, fs=FS, leads=LEAD_NAMES, units="mV")  # x: [N, leads, T]',
      'scores = enc.zero_shot(x, {"AF": "atrial fibrillation"}, fs=FS, leads=LEAD_NAMES)',
      "```", "", "## Input contract", "",
      f"- ECG: `{i['ecg']}` in **{i['units']}**, {i['fs']} Hz, {i['seconds']:g} s "
      f"({i['num_samples']} samples)",
      f"- lead order: {', '.join(i['lead_order'])}",
      f"- `valid_len`: {i['valid_len']}; `lead_mask`: {i['lead_mask']}",
      f"- normalisation (inside the model): {i['normalisation']}",
      f"- raw recordings: {i['canonicalisation']}",
  ]
  if i["text"]:
    lines.append(f"- reports: `{i['text']['ids']}`, `{i['text']['len']}`; "
                 f"{i['text']['cleaning']}")
  lines += ["", "## Outputs", "", "| tower | output | dimension |", "|---|---|---|", *out_rows,
            "", "## Training", "",
            f"- data: `{t['data_dir']}`",
            f"- step {t['step']} of {t['total_steps']}; size {t['size']}; variant "
            f"{t['variant']}; report encoder {t['text_encoder']}",
            f"- weights: {info['dtype']}; tokenizer: {info['tokenizer']}",
            "", "## Evaluation", ""]
  if not ev["found"]:
    lines.append(f"No evaluation found (looked for `{ev['looked_in']}`).")
  else:
    lines.append(f"{ev['metric']} (%) with the {ev['interval']} in brackets, from "
                 f"`{ev['source']}`.")
    for name, m in sorted(ev["models"].items(), key=lambda kv: kv[0] != ev["model"]):
      tasks = list(m["tasks"])
      metrics = sorted({k for cells in m["tasks"].values() for k in cells},
                       key=lambda k: (k != "zero-shot", k))
      if not metrics:
        continue
      this = " (this model)" if name == ev["model"] else ""
      lines += ["", f"### {name}{this}, split {m['split']}", "",
                "| metric | " + " | ".join(tasks) + " |",
                "|---|" + "---|" * len(tasks)]
      for k in metrics:
        cells = []
        for task in tasks:
          c = m["tasks"][task].get(k)
          cells.append(report.cell_text(c) if c else "–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
  lines += ["", "## Licence", "", f"{info['license']}", "", "## Citation", "",
            info["citation"], ""]
  return "\n".join(lines)


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  """Copies a folder's files (epath has no recursive glob on object storage)."""
  dst.mkdir(parents=True, exist_ok=True)
  for p in src.iterdir():
    if p.is_dir():
      _copy_tree(p, dst / p.name)
    else:
      (dst / p.name).write_bytes(p.read_bytes())


def publish(export_dir: str | os.PathLike, hub_dir: str | os.PathLike, *,
            overwrite: bool = False) -> epath.Path:
  """A model-hub folder: the export's files plus README.md (the model card with hub metadata).

  No network: the folder is what one uploads (`huggingface-cli upload ORG/NAME DIR`). It
  loads back with `cgdmer_jax.load(hub_dir)`.
  """
  from cgdmer_jax import inference

  src, dst = epath.Path(export_dir), epath.Path(hub_dir)
  info_path = src / inference.EXPORT_INFO
  if not info_path.is_file():
    raise FileNotFoundError(f"{src} is not an export (no {inference.EXPORT_INFO})")
  inference.empty_export_folder(dst, overwrite=overwrite, kind="a published folder")
  _copy_tree(src, dst)
  info = json.loads(info_path.read_text())
  card = (src / inference.MODEL_CARD).read_text() if (src / inference.MODEL_CARD).is_file() \
      else model_card(info)
  front = ["---", f"license: {str(info.get('license', LICENSE)).lower()}",
           "library_name: cgdmer_jax", "tags:", "- ecg", "- electrocardiogram", "- jax",
           "- cg-dmer", "---", ""]
  (dst / "README.md").write_text("\n".join(front) + card)
  return dst


