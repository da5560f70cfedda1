"""The project's import graph: dependencies run one way, no cycles, no private calls across
modules. Read from the sources (every import, function-level ones too), nothing is imported."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ('configs', 'data', 'inception')
# Who may import whom, by package prefix: a module under the key imports nothing listed.
FORBIDDEN = {
    'data': ('inception', 'configs'),
    'inception': ('configs',),
    'inception.paths': ('inception', 'data'),  # A leaf: every other package may use it.
    'inception.models': ('inception.train', 'inception.tools'),
    'inception.weights': ('inception.train', 'inception.tools'),
    'inception.train': ('inception.tools',),
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob('*.py')}


def _resolve(name: str) -> str | None:
  """The project module `name` refers to (a module, or the package holding an attribute)."""
  while name and name not in MODULES:
    name = name.rpartition('.')[0]
  return name or None


def _imports(module: str) -> list[tuple[str, str, ast.AST]]:
  """(imported project module, local alias, node) of every import in `module`."""
  tree = ast.parse(MODULES[module].read_text())
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        target = _resolve(a.name)
        if target:
          out.append((target, a.asname or a.name.split('.')[0], node))
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        target = _resolve(f'{node.module}.{a.name}')
        if target:
          out.append((target, a.asname or a.name, node))
          if a.name.startswith('_'):
            raise AssertionError(f'{module} imports the private {node.module}.{a.name}')
  return out


GRAPH = {m: sorted({t for t, _, _ in _imports(m) if t != m}) for m in MODULES}


def test_the_project_modules_are_found():
  assert {'data.pipeline', 'inception.models.inception_v3', 'inception.train.trainer',
          'inception.tools.evaluate', 'configs.validate'} <= set(MODULES)


@pytest.mark.parametrize('importer', sorted(FORBIDDEN))
def test_dependencies_run_one_way(importer):
  bad = [(m, t) for m, targets in GRAPH.items() for t in targets
         if (m == importer or m.startswith(importer + '.'))
         and any(t == f or t.startswith(f + '.') for f in FORBIDDEN[importer])]
  assert not bad, f'{importer} must not import {FORBIDDEN[importer]}: {bad}'


def test_no_import_cycles():
  """Package __init__ re-exports count: importing a package runs it."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for t in GRAPH[m]:
      if state.get(t) == 1:
        raise AssertionError('import cycle: ' + ' -> '.join(stack[stack.index(t):] + [t]))
      if not state.get(t):
        visit(t)
    stack.pop()
    state[m] = 2

  for m in sorted(GRAPH):
    if not state.get(m):
      visit(m)


def test_no_calls_into_another_modules_private_names():
  bad = []
  for m in MODULES:
    aliases = {alias: t for t, alias, _ in _imports(m) if t != m}
    for node in ast.walk(ast.parse(MODULES[m].read_text())):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith('_')
          and not node.attr.startswith('__')):
        bad.append(f'{m}: {node.value.id}.{node.attr} ({aliases[node.value.id]})')
  assert not bad, bad
