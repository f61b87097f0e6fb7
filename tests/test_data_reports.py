"""Report cleaning and the SentencePiece tokenizer (special ids, fixed length, train-only)."""

import csv
import os
import pathlib

import numpy as np
import pytest
import sentencepiece as spm

from cgdmer_jax.data import features
from data_pipelines import reports
from data_pipelines import signal
from data_pipelines import tokenizer
from data_pipelines import write


@pytest.mark.parametrize("raw,clean", [
    ("sinusrhythmus lagetyp normal rechtsschenkelblock 4.46        unbestÄtigter bericht",
     "sinusrhythmus lagetyp normal rechtsschenkelblock"),
    ("linksbelastung 4.46                          unbestÄt", "linksbelastung"),
    ("linksbelastung 4.46 u", "linksbelastung"),
    ("inferiorer infarkt     alter unbest.", "inferiorer infarkt alter unbest."),
    ("sinus rhythm. normal ecg. Edit: NORM 100, rSIII(NORM 100)", "sinus rhythm. normal ecg."),
    ("*** Unconfirmed report ***  Sinus\u00a0rhythm", "sinus rhythm"),
    ("--- Pediatric criteria used --- A-V block", "pediatric criteria used a-v block"),
    ("   ", ""),
])
def test_clean_report(raw, clean):
  assert reports.clean_report(raw) == clean


def test_join_parts_mimic_style():
  parts = ["Sinus rhythm", None, float("nan"), "  ", "Normal ECG", "*** Unconfirmed ***"]
  assert reports.join_parts(parts) == "Sinus rhythm Normal ECG *** Unconfirmed ***"
  assert reports.clean_report(parts) == "sinus rhythm normal ecg unconfirmed"


CORPUS = [reports.clean_report(r) for r in (
    "Sinus rhythm. Normal ECG.", "Sinus bradycardia. Left axis deviation.",
    "Atrial fibrillation with rapid ventricular response.", "sinusrhythmus normales ekg",
    "Right bundle branch block. Left anterior fascicular block.",
    "ST segments are depressed in I, aVL, V5,6.", "T waves are inverted in V1-3.",
    "vorhofflimmern linkstyp periphere niederspannung", "Sinus tachycardia.",
    "Left ventricular hypertrophy with strain pattern.") * 5]


@pytest.fixture(scope="module")
def tok():
  return tokenizer.Tokenizer(tokenizer.train(CORPUS, vocab_size=120))


def test_special_ids(tok):
  sp = tok.sp
  assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
  assert sp.piece_to_id("<mask>") == features.MASK_ID == 4
  assert [sp.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
  # The user-defined symbol is always one piece.
  assert features.MASK_ID in tok.sp.encode("sinus <mask> rhythm")


def test_encode_decode_fixed_length(tok):
  text = CORPUS[0]
  ids, n = tok.encode(text, 32)
  assert ids.shape == (32,) and ids.dtype == np.int64
  assert ids[0] == features.BOS_ID and ids[n - 1] == features.EOS_ID
  assert (ids[n:] == features.PAD_ID).all() and n > 3
  assert tok.decode(ids) == text
  short, n_short = tok.encode(CORPUS[2], 6)
  assert n_short == 6 and short[0] == features.BOS_ID and short[-1] == features.EOS_ID
  empty, n_empty = tok.encode("", 8)
  assert n_empty == 0 and (empty == features.PAD_ID).all()


def test_vocab_clamped_with_warning(caplog):
  proto = tokenizer.train(CORPUS, vocab_size=5000)
  size = tokenizer.Tokenizer(proto).vocab_size
  assert size < 5000
  assert any("clamped" in r.getMessage() for r in caplog.records)


def test_untrainable_corpus_is_a_clear_error():
  with pytest.raises(ValueError, match="no non-empty report"):
    tokenizer.train(["", ""], vocab_size=100)


def test_foreign_special_ids_refused(tmp_path):
  model = tmp_path / "m"
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=str(model),
                                 vocab_size=60, minloglevel=2)
  with pytest.raises(ValueError, match="special ids"):
    tokenizer.Tokenizer.from_file(f"{model}.model")


def _ptbxl_with_marker(src: pathlib.Path, dst: pathlib.Path, word: str) -> int:
  """A PTB-XL folder whose val/test reports (folds 9, 10) all carry `word`."""
  dst.mkdir()
  os.symlink(src / "records100", dst / "records100")
  (dst / "scp_statements.csv").write_bytes((src / "scp_statements.csv").read_bytes())
  with open(src / "ptbxl_database.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  marked = 0
  for row in rows:
    if int(row["strat_fold"]) >= 9:
      row["report"] = f"{word} {word} {row['report']}"
      marked += 1
  with open(dst / "ptbxl_database.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return marked


def test_tokenizer_trained_on_train_split_only(embedded_data, tmp_path, monkeypatch):
  # With character_coverage=1.0 every character of the training corpus is a piece, so a
  # character that only val/test reports contain is <unk> iff they were not trained on.
  word = "\u03c8\u03c9"  # Greek psi omega: in no PTB-XL report
  root = tmp_path / "ptbxl"
  assert _ptbxl_with_marker(embedded_data / "ptbxl", root, word) == 48
  seen = []
  real_train = tokenizer.train
  monkeypatch.setattr(tokenizer, "train",
                      lambda corpus, *a, **k: seen.append(list(corpus)) or real_train(
                          seen[-1], *a, **k))
  cfg = write.BuildConfig(source="ptbxl", input=str(root), output=str(tmp_path / "out"),
                          signal=signal.Config(fs=100), vocab_size=400, workers=1,
                          progress=False)
  write.build(cfg)
  corpus = seen[0]
  assert len(corpus) == 192 and not any(word in c for c in corpus)
  with open(root / "ptbxl_database.csv", newline="", encoding="utf-8") as f:
    expected = [reports.clean_report(r["report"]) for r in csv.DictReader(f)
                if int(r["strat_fold"]) <= 8]
  assert sorted(corpus) == sorted(e for e in expected if e)
  tok = tokenizer.Tokenizer.from_file(tmp_path / "out" / features.TOKENIZER_FILE)
  assert features.UNK_ID in tok.sp.encode(word)
  # Control: when those reports ARE training data, the characters are pieces.
  cfg_all = write.BuildConfig(source="ptbxl", input=str(root), output=str(tmp_path / "all"),
                              signal=signal.Config(fs=100), vocab_size=400, workers=1,
                              split_mode="hash", val_fraction=0.0, test_fraction=0.0,
                              progress=False)
  write.build(cfg_all)
  tok_all = tokenizer.Tokenizer.from_file(tmp_path / "all" / features.TOKENIZER_FILE)
  assert features.UNK_ID not in tok_all.sp.encode(word)
  assert len(seen[1]) == 240
