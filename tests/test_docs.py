"""The repository's text: no merge-conflict leftovers, and the docs' relative links resolve."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
# What the project ships: its packages, docs and CI, and the files at the top level (not
# runs/, virtual environments or the embedded data).
DIRS = ("cgdmer_jax", "data_pipelines", "configs", "tests", "docs", ".ci")
TEXT = {".py", ".md", ".cfg", ".toml", ".txt", ".sh", ".yaml", ".yml", ""}
CONFLICT = re.compile(r"^(<<<<<<<|>>>>>>>)( |$)", re.M)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _files():
  paths = [p for p in REPO.iterdir() if p.is_file()]
  for d in DIRS:
    paths += [p for p in (REPO / d).rglob("*") if p.is_file()
              and "__pycache__" not in p.parts and (REPO / "tests" / "data") not in p.parents]
  return sorted(p for p in paths if p.suffix in TEXT)


def test_no_merge_conflict_markers():
  bad = [f"{p.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}"
         for p in _files() for text in [p.read_text(errors="replace")]
         for m in CONFLICT.finditer(text)]
  assert not bad, f"merge-conflict markers left in: {bad}"


def test_relative_links_in_docs_resolve():
  docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
  assert len(docs) > 3
  broken = []
  for doc in docs:
    for target in LINK.findall(doc.read_text()):
      if "://" in target or target.startswith("mailto:"):
        continue
      if not (doc.parent / target).exists():
        broken.append(f"{doc.relative_to(REPO)} -> {target}")
  assert not broken, f"links to missing files: {broken}"
