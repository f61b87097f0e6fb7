"""Zero-shot classification: cosine similarity between ECG embeddings and class prompts.

One prompt per class from MERL's clinical-knowledge-enhanced descriptions
(`merl_zeroshot/CKEPE_prompt.json`, keyed by class name). Each prompt goes through the same
report cleaning and tokenizer as the pretraining reports, then the text tower and the
modality-shared encoder; the score of (ECG, class) is the cosine of the two L2-normalised
shared embeddings. Macro ROC-AUC over classes as in `auc.py`.
"""

from __future__ import annotations

import json
import os
from typing import Callable
from typing import Sequence

import numpy as np

from cgdmer_jax.evaluators import auc as auc_lib


def load_prompts(path: str | os.PathLike) -> dict[str, str]:
  """{class name: description} from a CKEPE-style JSON object."""
  with open(path, encoding="utf-8") as f:
    prompts = json.load(f)
  if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
    raise ValueError(f"{path}: expected a JSON object of class name -> prompt text")
  return prompts


def class_prompts(classes: Sequence[str], prompts: dict[str, str]) -> tuple[list[str], list[str]]:
  """The prompt of each class; a class without one falls back to its own name (reported)."""
  texts, missing = [], []
  for c in classes:
    if c in prompts:
      texts.append(prompts[c])
    else:
      texts.append(c)
      missing.append(c)
  return texts, missing


def scores(ecg_emb_NxD: np.ndarray, class_emb_CxD: np.ndarray) -> np.ndarray:
  """Cosine similarities [N, C] (inputs re-normalised for safety)."""
  a = ecg_emb_NxD / np.maximum(np.linalg.norm(ecg_emb_NxD, axis=-1, keepdims=True), 1e-12)
  b = class_emb_CxD / np.maximum(np.linalg.norm(class_emb_CxD, axis=-1, keepdims=True), 1e-12)
  return a @ b.T


def evaluate(ecg_emb_NxD: np.ndarray, y_NxC: np.ndarray, classes: Sequence[str],
             embed_texts: Callable[[list[str]], np.ndarray], prompts: dict[str, str]) -> dict:
  """Zero-shot macro AUC of one split.

  Args:
    ecg_emb_NxD: ECG embeddings (shared space).
    y_NxC: labels.
    classes: class names, in label column order.
    embed_texts: strings -> [C, D] text embeddings in the shared space.
    prompts: {class: description}.

  Returns:
    JSON-ready dict with macro_auc, per_class, skipped and prompts_missing.
  """
  texts, missing = class_prompts(classes, prompts)
  result = auc_lib.macro_auc(y_NxC, scores(ecg_emb_NxD, np.asarray(embed_texts(texts))), classes)
  out = result.to_json()
  out["prompts_missing"] = missing
  return out
