"""The package's import graph, read with `ast`: no loops, and dependencies point down the layers.

Every import counts, module-level and inside functions alike (a deferred import back up the
layers is still a loop). The layers, bottom up, are drawn in docs/ARCHITECTURE.md.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("cgdmer_jax", "data_pipelines", "configs")

# Model, masking and loss code: pure functions of arrays and the config.
STEP_LAYER = ("cgdmer_jax.models", "cgdmer_jax.masking", "cgdmer_jax.losses",
              "cgdmer_jax.siglip", "cgdmer_jax.objective")
# What the step layer must never reach, directly or through another module.
ABOVE_STEP = ("cgdmer_jax.train.loop", "cgdmer_jax.train.sharding", "cgdmer_jax.train.accumulate",
              "cgdmer_jax.train.checkpointing", "cgdmer_jax.train.prefetch", "cgdmer_jax.train.checks",
              "cgdmer_jax.inference", "cgdmer_jax.evaluators", "cgdmer_jax.perf",
              "cgdmer_jax.data.reader", "data_pipelines", "configs")
TF = ("tensorflow", "tensorflow_datasets", "apache_beam")


def _within(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for pkg in PACKAGES:
    for path in sorted((REPO / pkg).rglob("*.py")):
      parts = list(path.relative_to(REPO).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


MODULES = _modules()


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
  """(imported module, at module level?) for every import statement of a file."""
  tree = ast.parse(path.read_text(), filename=str(path))
  top = {id(node) for node in tree.body}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, id(node) in top) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        out.append((sub if sub in MODULES else node.module, id(node) in top))
  return out


def _graph() -> dict[str, set[str]]:
  return {m: {name for name, _ in _imports(p) if name in MODULES and name != m}
          for m, p in MODULES.items()}


GRAPH = _graph()


def _closure(start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in GRAPH[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def test_graph_is_read():
  # The walk sees the imports it must judge (a broken walk would pass everything below).
  assert "cgdmer_jax.siglip" in GRAPH["cgdmer_jax.losses"]
  assert "cgdmer_jax.train.accumulate" in GRAPH["cgdmer_jax.train.loop"]
  assert "cgdmer_jax.models.patching" in GRAPH["cgdmer_jax.masking"]
  assert "cgdmer_jax.data.reader" in GRAPH["cgdmer_jax.train.loop"]  # a deferred import counts


def test_no_import_loop():
  # Tarjan's strongly connected components: any component of two or more modules is a loop.
  index, low, stack, on, loops = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in GRAPH[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        loops.append(sorted(comp))

  for v in sorted(GRAPH):
    if v not in index:
      visit(v)
  assert not loops, f"import loops: {loops}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, STEP_LAYER)))
def test_step_layer_imports_nothing_above_it(module):
  bad = sorted(m for m in _closure(module) | {module} if _within(m, ABOVE_STEP))
  assert not bad, f"{module} reaches {bad}"
  # TensorFlow: never in the step layer itself, and nowhere at module level of what it reaches.
  tf_here = [n for n, _ in _imports(MODULES[module]) if _within(n, TF)]
  assert not tf_here, f"{module} imports {tf_here}"
  for dep in _closure(module):
    tf_top = [n for n, top in _imports(MODULES[dep]) if top and _within(n, TF)]
    assert not tf_top, f"{module} -> {dep} imports {tf_top} at module level"


def test_only_entry_points_import_configs():
  for module, path in MODULES.items():
    if not module.startswith("cgdmer_jax"):
      continue
    if any(_within(n, ("configs",)) for n, _ in _imports(path)):
      assert 'if __name__ == "__main__":' in path.read_text(), (
          f"{module} imports the configs package but is not a command")


def test_nothing_but_perf_imports_perf():
  for module in MODULES:
    if _within(module, ("cgdmer_jax.perf",)):
      continue
    users = [m for m in GRAPH[module] if _within(m, ("cgdmer_jax.perf",))]
    assert not users, f"{module} imports {users}"
