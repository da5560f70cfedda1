"""The project's import graph: dependencies run one way, no cycles, no private calls across
modules. Read from the sources (every import, function-level ones too), nothing is imported."""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ('configs', 'data', 'inception')
# The bottom layer: leaves (they import nothing of the project) that `data` may import too. They
# live in inception/, not data/, since `import data` loads TensorFlow.
BOTTOM = ('inception.paths', 'inception.checks', 'inception.lazy')
# Who may import whom, by package prefix: a module under the key imports nothing listed
# (but what EXCEPT lets it).
FORBIDDEN = {
    'data': ('inception', 'configs'),  # Except BOTTOM.
    'inception': ('configs',),
    **{leaf: ('inception', 'data') for leaf in BOTTOM},  # Leaves: every other package may use them.
    # The architectures import nothing above them: no loop between models and weights.
    'inception.models': ('inception.train', 'inception.tools', 'inception.weights',
                         'inception.backbones', 'inception.transfer'),
    # The backbone registry joins a model to its weights: above both; the transfer model
    # (a registered backbone cut + a head) above the registry.
    'inception.backbones': ('inception.train', 'inception.tools', 'inception.transfer'),
    'inception.transfer': ('inception.train', 'inception.tools'),
    'inception.weights': ('inception.train', 'inception.tools', 'inception.backbones',
                          'inception.transfer'),
    'inception.train': ('inception.tools',),
}
EXCEPT = {'data': BOTTOM}


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
         and any(t == f or t.startswith(f + '.') for f in FORBIDDEN[importer])
         and t not in EXCEPT.get(importer, ())]
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


def _imported_names(tree: ast.AST) -> list[tuple[str, int]]:
  """(dotted module name, line) of every absolute import in `tree`, function-level ones too,
  and of those in string constants that parse as code (a subprocess' `python -c` script)."""
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      out.append((node.module, node.lineno))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and 'import' in node.value:
      try:
        inner = ast.parse(textwrap.dedent(node.value))
      except SyntaxError:
        continue
      out += [(name, node.lineno) for name, _ in _imported_names(inner)]
  return out


def test_tests_do_not_import_the_benchmarks():
  """bench/ is only benchmarks: the references the tests compare against are tests.reference
  (which the benchmarks import, never the other way)."""
  bad = [f'{path.relative_to(ROOT)}:{line}: {name}'
         for path in sorted((ROOT / 'tests').rglob('*.py'))
         for name, line in _imported_names(ast.parse(path.read_text()))
         if name == 'bench' or name.startswith('bench.')]
  assert not bad, bad


def _project_module_aliases(tree: ast.AST) -> set[str]:
  """Local names bound to the project's modules and packages (`import data.x as y`,
  `from inception.train import z`) anywhere in `tree`."""
  ours = lambda name: name.split('.')[0] in (*PACKAGES, 'bench')
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {a.asname or a.name.split('.')[0] for a in node.names if ours(a.name)}
    elif isinstance(node, ast.ImportFrom) and node.module and ours(node.module):
      names |= {a.asname or a.name for a in node.names
                if _resolve(f'{node.module}.{a.name}') == f'{node.module}.{a.name}'}
  return names


def _rebinds_module_global(node: ast.AST, modules: set[str]) -> str | None:
  """'mod.attr' when `node` assigns to, or mutates by subscript, another module's global."""
  targets = []
  if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
  elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in ('setattr', 'delattr') and node.args):
    first = node.args[0]
    if isinstance(first, ast.Name) and first.id in modules:
      return f'{node.func.id}({first.id}, ...)'
  for target in targets:
    while isinstance(target, ast.Subscript):
      target = target.value
    if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
        and target.value.id in modules):
      return f'{target.value.id}.{target.attr}'
  return None


def test_no_module_changes_another_modules_globals():
  """Module state belongs to its module: directories and counters are passed in or returned
  (tests may still monkeypatch). Covers the packages, train.py and bench/; the standard
  library's process state (os.environ, sys.stdout) is not a module's."""
  files = [*MODULES.values(), ROOT / 'train.py', *sorted((ROOT / 'bench').glob('*.py'))]
  bad = []
  for path in files:
    tree = ast.parse(path.read_text())
    modules = _project_module_aliases(tree)
    for node in ast.walk(tree):
      hit = _rebinds_module_global(node, modules)
      if hit:
        bad.append(f'{path.relative_to(ROOT)}:{node.lineno}: {hit}')
  assert not bad, bad
