"""The package's shape, checked from the code's own imports.

Every `import` of every module is parsed with `ast`, those inside functions and
`if TYPE_CHECKING:` blocks included (a function-level import is an import all the
same: it runs whenever the function does). The library is a stack of stage
subpackages; a module may import its own stage and the stages below it, never one
above, and no set of modules may import each other in a circle. The layout section of
BUILD_NOTES.md draws the same tree, and a test holds it to the files on disk.
"""
from __future__ import annotations

import ast
import os
import re
import textwrap
from typing import Iterable

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "xtal2dos_jax"
# The pipeline's stages, bottom up: each may import only itself and those before it.
STAGES = ("core", "input_pipeline", "physics", "objectives", "models", "training",
          "evaluation", "inference", "workflows")
MAX_MODULE_LINES = 450
MAX_BINARY_LINES = 80


def _modules(root: str, package: str) -> dict[str, str]:
  """Dotted module name -> file, for every .py file of `package` under `root`."""
  out = {}
  for dirpath, _, files in os.walk(os.path.join(root, package)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        out[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
  return out


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterable[str]:
  """The project modules one import statement loads (`from p import name` loads p.name
  when that is a module, else p)."""
  if isinstance(node, ast.Import):
    for alias in node.names:
      yield alias.name
    return
  if node.level:                                   # relative: from .x import y
    base = module.split(".")[:len(module.split(".")) - node.level + (1 if is_package else 0)]
    target = ".".join(base + ([node.module] if node.module else []))
  else:
    target = node.module or ""
  for alias in node.names:
    full = f"{target}.{alias.name}"
    yield full if full in known else target


def import_graph(root: str, package: str = PACKAGE) -> dict[str, set[str]]:
  """module -> the modules of `package` it imports anywhere in its file."""
  modules = _modules(root, package)
  known = set(modules)
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        deps.update(d for d in _imported(node, module, is_package, known) if d in known)
    deps.discard(module)
    graph[module] = deps
  return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), sorted."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def stage_of(module: str, package: str = PACKAGE) -> int | None:
  """Index in STAGES of the stage subpackage holding `module`; None for the package's
  own __init__ (the lazy Python API, above every stage)."""
  parts = module.split(".")
  if parts == [package]:
    return None
  return STAGES.index(parts[1]) if parts[1] in STAGES else -1


def upward_imports(graph: dict[str, set[str]], package: str = PACKAGE) -> list[str]:
  """'a -> b' for every import of a module of a higher stage, or of a module outside
  every stage."""
  out = []
  for module, deps in sorted(graph.items()):
    mine = stage_of(module, package)
    if mine is None:
      continue
    for dep in sorted(deps):
      theirs = stage_of(dep, package)
      if mine < 0 or theirs is None or theirs < 0 or theirs > mine:
        out.append(f"{module} -> {dep}")
  return out


# ---------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
  return import_graph(REPO)


def test_no_import_cycles(graph):
  assert import_cycles(graph) == []


def test_imports_run_down_the_stages(graph):
  assert upward_imports(graph) == []
  # every stage is there and is used: a renamed folder cannot leave a stage empty
  present = {stage_of(m) for m in graph} - {None}
  assert present == set(range(len(STAGES)))


def test_the_api_and_the_configs_stand_apart(graph):
  """The package root only reaches `inference` (lazily, for `Predictor`); the config
  files import no library module, so reading a config never starts JAX."""
  assert graph[PACKAGE] == {f"{PACKAGE}.inference.predictor"}
  for dirpath, _, files in os.walk(os.path.join(REPO, "configs")):
    for name in files:
      if name.endswith(".py"):
        with open(os.path.join(dirpath, name)) as f:
          tree = ast.parse(f.read())
        for node in ast.walk(tree):
          if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]
            assert not any(n.split(".")[0] == PACKAGE for n in names), name


def test_library_modules_stay_small():
  long = {path: n for path in _modules(REPO, PACKAGE).values()
          if (n := sum(1 for _ in open(path))) > MAX_MODULE_LINES}
  assert long == {}


def test_binaries_are_thin():
  """Each experiments/*.py parses flags and calls the library."""
  long = {}
  for name in os.listdir(os.path.join(REPO, "experiments")):
    if name.endswith(".py"):
      with open(os.path.join(REPO, "experiments", name)) as f:
        n = sum(1 for _ in f)
      if n > MAX_BINARY_LINES:
        long[name] = n
  assert long == {}


def _layout_files(notes: str) -> set[str]:
  """The .py paths the '## 1. Layout' section's tree draws (two spaces per level)."""
  section = notes.split("## 1. Layout", 1)[1].split("\n## ", 1)[0]
  tree = section.split("```", 2)[1]
  stack: list[tuple[int, str]] = []
  out = set()
  for line in tree.splitlines():
    m = re.match(r"^( *)([\w.]+/|[\w]+\.py)(\s|$)", line)
    if not m:
      continue
    depth = len(m.group(1))
    while stack and stack[-1][0] >= depth:
      stack.pop()
    path = "".join(name for _, name in stack) + m.group(2)
    if m.group(2).endswith("/"):
      stack.append((depth, m.group(2)))
    else:
      out.add(path)
  return out


def _docstring_only(path: str) -> bool:
  with open(path) as f:
    body = ast.parse(f.read()).body
  return len(body) <= 1 and all(isinstance(n, ast.Expr) for n in body)


def test_the_layout_in_build_notes_matches_the_tree():
  """Every module is drawn (a stage package's docstring-only __init__.py may be left
  out: its folder line says what it holds), and every drawn file exists."""
  with open(os.path.join(REPO, "BUILD_NOTES.md")) as f:
    drawn = _layout_files(f.read())
  modules = {os.path.relpath(p, REPO) for p in _modules(REPO, PACKAGE).values()}
  on_disk = {p for p in modules
             if not (p.endswith("__init__.py") and _docstring_only(os.path.join(REPO, p)))}
  drawn -= {p for p in drawn if p in modules and p not in on_disk}
  on_disk |= {f"experiments/{n}" for n in os.listdir(os.path.join(REPO, "experiments"))
              if n.endswith(".py")}
  assert sorted(on_disk - drawn) == [] and sorted(drawn - on_disk) == []


# ---------------------------------------------------------------- the checker itself


def _write(root, files: dict[str, str]) -> None:
  for rel, text in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(textwrap.dedent(text))


_PLANTED_BASE = {
    "pkg/__init__.py": "",
    "pkg/core/__init__.py": "",
    "pkg/core/errors.py": "X = 1\n",
    "pkg/training/__init__.py": "",
    "pkg/training/loop.py": "from pkg.core import errors\n",
}


def test_checker_finds_a_circle_hidden_in_a_function(tmp_path):
  _write(tmp_path, {
      **_PLANTED_BASE,
      "pkg/training/state.py": "from pkg.training import loop\n",
      "pkg/training/loop.py": """\
          from pkg.core import errors

          def restore():
            from pkg.training.state import X   # the circle hides here
          """,
  })
  graph = import_graph(str(tmp_path), "pkg")
  assert import_cycles(graph) == [["pkg.training.loop", "pkg.training.state"]]
  assert upward_imports(graph, "pkg") == []


def test_checker_finds_an_import_up_the_stages(tmp_path):
  _write(tmp_path, {
      **_PLANTED_BASE,
      "pkg/core/errors.py": """\
          from typing import TYPE_CHECKING
          if TYPE_CHECKING:
            from pkg.training import loop
          """,
  })
  graph = import_graph(str(tmp_path), "pkg")
  assert upward_imports(graph, "pkg") == ["pkg.core.errors -> pkg.training.loop"]
  assert import_cycles(graph) == [["pkg.core.errors", "pkg.training.loop"]]


def test_checker_resolves_relative_imports_and_packages(tmp_path):
  _write(tmp_path, {
      **_PLANTED_BASE,
      "pkg/core/__init__.py": "from .errors import X\n",
      "pkg/core/errors.py": "from . import __name__ as _n\nfrom pkg import training\n",
  })
  graph = import_graph(str(tmp_path), "pkg")
  assert graph["pkg.core"] == {"pkg.core.errors"}
  assert "pkg.training" in graph["pkg.core.errors"]
  assert upward_imports(graph, "pkg") == ["pkg.core.errors -> pkg.training"]


def test_layout_parser_builds_paths_from_indentation():
  notes = "## 1. Layout\n\n```\nroot/\n  a.py     one\n  sub/     two\n    b.py   three\n  c.py\n```\n\n## 2. Next\n"
  assert _layout_files(notes) == {"root/a.py", "root/sub/b.py", "root/c.py"}
