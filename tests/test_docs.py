"""The repository's text: no merge-conflict leftovers, and the docs' relative links resolve."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache"}
TEXT = {".py", ".md", ".cfg", ".toml", ".txt", ".sh", ".yaml", ".yml", ".json"}
CONFLICT = re.compile(r"^(<<<<<<< |>>>>>>> |=======$)", re.M)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _files(suffixes):
  for path in sorted(REPO.rglob("*")):
    rel = path.relative_to(REPO)
    if path.is_file() and path.suffix in suffixes and not SKIP_DIRS & set(rel.parts) \
        and rel.parts[:2] != ("tests", "data"):
      yield path


def test_no_merge_conflict_markers():
  bad = [f"{p.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}"
         for p in _files(TEXT) for text in [p.read_text(errors="replace")]
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
