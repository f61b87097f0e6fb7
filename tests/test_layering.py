"""The package's import graph, read with `ast`: no loops, and dependencies point down the layers.

Every import counts, module-level and inside functions alike (a deferred import back up the
layers is still a loop). The layers are package prefixes (docs/ARCHITECTURE.md draws them), so
a new module inside a folder is judged without editing this file; a command is any module
with a `__main__` block.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("cgdmer_jax", "data_pipelines", "configs")

# Bottom up. A module belongs to the layer of its longest matching prefix; it may import its
# own layer and the layers below, never above.
LAYERS = (
    ("schema", ("cgdmer_jax.data.features", "cgdmer_jax.overrides", "cgdmer_jax.progress",
                "data_pipelines.errors")),
    ("step", ("cgdmer_jax.models", "cgdmer_jax.masking", "cgdmer_jax.losses",
              "cgdmer_jax.siglip", "cgdmer_jax.objective")),
    ("input", ("cgdmer_jax.data", "data_pipelines")),
    ("trainer", ("cgdmer_jax.train",)),
    ("evaluation", ("cgdmer_jax.evaluators", "cgdmer_jax.inference", "cgdmer_jax.encoder",
                    "cgdmer_jax.finetuning")),
    ("perf", ("cgdmer_jax.perf",)),
    ("commands", ("cgdmer_jax", "configs")),  # what no prefix above claims: the package root
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
# Layers that never import TensorFlow, nor reach a module that imports it at module level (the
# schema below them builds TFDS features inside a function: only the converter calls it).
TF_FREE = ("step",)
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


def _is_command(module: str) -> bool:
  return 'if __name__ == "__main__":' in MODULES[module].read_text()


def layer_of(module: str, *, command: bool = False) -> str:
  """The layer of a module name: a command sits on top wherever its file is."""
  if command:
    return "commands"
  best, best_len = None, -1
  for name, prefixes in LAYERS:
    for p in prefixes:
      if _within(module, (p,)) and len(p) > best_len:
        best, best_len = name, len(p)
  if best is None:
    raise KeyError(f"{module} is in no layer: give it a package prefix in LAYERS")
  return best


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
COMMANDS = {m for m in MODULES if _is_command(m)}


def upward_imports(graph: dict[str, set[str]], commands: set[str]) -> list[str]:
  """Every edge of `graph` that points to a higher layer, or into `configs` from a non-command."""
  bad = []
  for module, deps in sorted(graph.items()):
    here = layer_of(module, command=module in commands)
    for dep in sorted(deps):
      if _within(dep, ("configs",)) and module not in commands and not _within(module,
                                                                                 ("configs",)):
        bad.append(f"{module} imports {dep}: only commands read configs/")
        continue
      there = layer_of(dep, command=dep in commands)
      if RANK[there] > RANK[here]:
        bad.append(f"{module} ({here}) imports {dep} ({there})")
  return bad


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
  assert {"cgdmer_jax.main", "cgdmer_jax.benchmark", "data_pipelines.build"} <= COMMANDS


def test_every_module_has_a_layer():
  for module in MODULES:
    layer_of(module, command=module in COMMANDS)


def test_layers_point_down():
  bad = upward_imports(GRAPH, COMMANDS)
  assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("module, dep", [
    ("cgdmer_jax.models.ecg", "cgdmer_jax.train.loop"),       # step -> trainer
    ("cgdmer_jax.data.reader", "cgdmer_jax.train.sharding"),  # input -> trainer
    ("cgdmer_jax.train.loop", "cgdmer_jax.evaluators.tasks"),  # trainer -> evaluation
    ("cgdmer_jax.evaluators.runner", "cgdmer_jax.perf.flops"),  # evaluation -> perf
    ("cgdmer_jax.inference", "configs.pretrain"),             # configs outside a command
    ("cgdmer_jax.train.loop", "cgdmer_jax.main"),             # anything -> a command
])
def test_an_upward_import_is_caught(module, dep):
  graph = {m: set(deps) for m, deps in GRAPH.items()}
  graph[module].add(dep)
  assert any(line.startswith(f"{module} ") and dep in line
             for line in upward_imports(graph, COMMANDS))


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


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if m not in COMMANDS and layer_of(m) in TF_FREE))
def test_tf_free_layers_never_reach_tensorflow(module):
  tf_here = [n for n, _ in _imports(MODULES[module]) if _within(n, TF)]
  assert not tf_here, f"{module} imports {tf_here}"
  for dep in _closure(module):
    tf_top = [n for n, top in _imports(MODULES[dep]) if top and _within(n, TF)]
    assert not tf_top, f"{module} -> {dep} imports {tf_top} at module level"
