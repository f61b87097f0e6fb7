"""The repository's text: no merge-conflict leftovers, the docs' relative links and anchors resolve,
and the defaults docs/RECIPE.md names are those of configs/pretrain.py."""

import ast
import math
import pathlib
import re

from configs import pretrain

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


def _docs():
  """README, docs/ and the studies' READMEs under results/."""
  return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
          *sorted((REPO / "results").glob("**/README.md"))]


def test_relative_links_in_docs_resolve():
  docs = _docs()
  assert len(docs) > 3
  broken = []
  for doc in docs:
    for target in LINK.findall(doc.read_text()):
      if "://" in target or target.startswith("mailto:"):
        continue
      if not (doc.parent / target).exists():
        broken.append(f"{doc.relative_to(REPO)} -> {target}")
  assert not broken, f"links to missing files: {broken}"


ANCHOR_LINK = re.compile(r"\]\(([^)#\s]*)#([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _anchors(md):
  """GitHub's heading ids of a Markdown file (code blocks skipped, repeats numbered)."""
  seen, out = {}, set()
  for line in FENCE.sub("", md.read_text()).splitlines():
    m = re.match(r"#{1,6} +(.*?) *#*$", line)
    if not m:
      continue
    slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def test_anchor_links_in_docs_resolve():
  broken = []
  for doc in _docs():
    for target, anchor in ANCHOR_LINK.findall(FENCE.sub("", doc.read_text())):
      if "://" in target:
        continue
      md = doc if not target else doc.parent / target
      if md.suffix != ".md" or not md.exists():
        continue  # missing files are test_relative_links_in_docs_resolve's
      if anchor not in _anchors(md):
        broken.append(f"{doc.relative_to(REPO)} -> {target}#{anchor}")
  assert not broken, f"links to missing headings: {broken}"


# docs/RECIPE.md's "The defaults and why": one row per default, `dotted.key` | `python literal`.
DEFAULTS_HEADER = re.compile(r"^\| setting \| default \| why \|$", re.M)
DEFAULT_ROW = re.compile(r"^\| `([\w.]+)` \| `([^`]+)` \|", re.M)


def _recipe_defaults(text):
  """The (dotted key, value) rows of the defaults table, values parsed as Python literals."""
  header = DEFAULTS_HEADER.search(text)
  assert header, "docs/RECIPE.md has no '| setting | default | why |' table"
  table = text[header.start():].split("\n\n", 1)[0]
  return [(key, ast.literal_eval(value)) for key, value in DEFAULT_ROW.findall(table)]


def _resolve(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _same(doc_value, config_value):
  if isinstance(doc_value, bool) or isinstance(config_value, bool):
    return doc_value is config_value
  if isinstance(doc_value, (int, float)) and isinstance(config_value, (int, float)):
    return math.isclose(doc_value, config_value, rel_tol=1e-9, abs_tol=0.0)
  return type(doc_value) is type(config_value) and doc_value == config_value


def _default_mismatches(rows, config):
  bad = []
  for key, value in rows:
    try:
      actual = _resolve(config, key)
    except (KeyError, AttributeError):
      bad.append(f"{key}: not in the config")
      continue
    if not _same(value, actual):
      bad.append(f"{key}: RECIPE.md says {value!r}, configs/pretrain.py has {actual!r}")
  return bad


def _tiny_config():
  return pretrain.get_config("size=tiny")


def test_recipe_defaults_match_the_config():
  """Every default docs/RECIPE.md names is the value of configs/pretrain.py:size=tiny."""
  rows = _recipe_defaults((REPO / "docs" / "RECIPE.md").read_text())
  assert len(rows) >= 15, rows
  assert len({k for k, _ in rows}) == len(rows), "a setting is listed twice"
  bad = _default_mismatches(rows, _tiny_config())
  assert not bad, "docs/RECIPE.md defaults differ from configs/: " + "; ".join(bad)


def test_recipe_defaults_check_catches_a_wrong_value():
  """The comparison is not vacuous: every row with a changed value, or an unknown key, fails."""
  config = _tiny_config()
  rows = _recipe_defaults((REPO / "docs" / "RECIPE.md").read_text())

  def wrong(v):
    if isinstance(v, bool):
      return not v
    if isinstance(v, (int, float)):
      return v * 2 + 1
    return str(v) + "_x"

  for key, value in rows:
    assert _default_mismatches([(key, wrong(value))], config), f"{key}: a wrong value passed"
  assert _default_mismatches([("model.no_such_key", 1)], config)
  assert _default_mismatches([("model.patch_stats", 1)], config)  # 1 is not True
  table = "| setting | default | why |\n|---|---|---|\n| `total_steps` | `2000` | x |\n"
  assert _default_mismatches(_recipe_defaults(table), config)


# A repository path a doc names in backticks or plain text (`cgdmer_jax/train/loop.py`).
REPO_PATH = re.compile(r"\b((?:cgdmer_jax|data_pipelines|configs|tests|docs|results)"
                       r"(?:/[\w.-]+)+\.(?:py|md|json|csv))\b")


def missing_paths(text: str) -> list[str]:
  return sorted({p for p in REPO_PATH.findall(text) if not (REPO / p).exists()})


def test_docs_name_no_missing_file():
  docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
          *sorted((REPO / "results").glob("*/README.md"))]
  bad = {str(d.relative_to(REPO)): m for d in docs if (m := missing_paths(d.read_text()))}
  assert not bad, f"docs name files that do not exist: {bad}"
  assert missing_paths("see cgdmer_jax/train.py") == ["cgdmer_jax/train.py"]  # can fail


def test_architecture_tree_names_every_module():
  # docs/ARCHITECTURE.md's tree is the layer table: a new module must be placed in it.
  text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
  unnamed = [str(p.relative_to(REPO)) for pkg in ("cgdmer_jax", "data_pipelines")
             for p in sorted((REPO / pkg).rglob("*.py"))
             if p.stem != "__init__" and not re.search(rf"\b{p.stem}\b", text)]
  assert not unnamed, f"modules missing from docs/ARCHITECTURE.md: {unnamed}"
