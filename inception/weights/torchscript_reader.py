"""Reads the tensors of a TorchScript archive (`torch.jit.save` zip) without torch.

A TorchScript file is a zip holding `<prefix>/data.pkl` (a pickle of the module tree),
`<prefix>/data/<key>` (raw little-endian tensor storages) and `<prefix>/code/...` (the modules'
TorchScript source, Python syntax). Unpickling an untrusted file with the standard
`pickle.Unpickler` can import and call anything, so `_RestrictedUnpickler.find_class` resolves no
real module or class: it maps the few globals a module tree legitimately uses to inert local
stand-ins and refuses every other global (e.g. `os system`, `builtins eval`) before anything runs.

    root = read(path)                 # TorchScriptObject tree; tensors are numpy arrays
    for path, obj in walk(root): ...  # depth-first, in the file's attribute order
    concatenations(read_sources(path))  # {class: submodules its forward concatenates, in order}

The source is only parsed (`ast.parse`), never compiled or run.
"""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

# TorchScript storage classes -> numpy dtypes; storages are stored little-endian.
STORAGE_DTYPES = {
    'FloatStorage': np.dtype('<f4'), 'DoubleStorage': np.dtype('<f8'),
    'HalfStorage': np.dtype('<f2'), 'BFloat16Storage': None,  # No numpy dtype: refused.
    'LongStorage': np.dtype('<i8'), 'IntStorage': np.dtype('<i4'),
    'ShortStorage': np.dtype('<i2'), 'CharStorage': np.dtype('i1'),
    'ByteStorage': np.dtype('u1'), 'BoolStorage': np.dtype('?'),
}
_IDENTIFIER = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


class TorchScriptError(ValueError):
  """The file is not a TorchScript archive this reader accepts (names the file and why)."""


class TorchScriptObject:
  """Inert stand-in for a scripted module (`__torch__.<module> <Class>`); records its state.

  Attributes:
    qualname: the class as named in the file, e.g. '__torch__.inceptionv3.Conv2dLayer'.
    state: the module's attributes in file order (tensors as numpy arrays).
  """
  qualname = '__torch__'

  def __init__(self):
    self.state: dict[str, Any] = {}

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise TorchScriptError(f'{self.qualname}: expected a dict state, got {type(state).__name__}')
    self.state = dict(state)

  @property
  def class_name(self) -> str:
    return self.qualname.rsplit('.', 1)[-1]

  def __repr__(self):
    return f'TorchScriptObject({self.qualname}, keys={list(self.state)})'


class _StorageType:
  """Stand-in for `torch.<X>Storage`: only carries the dtype."""

  def __init__(self, name: str, dtype: np.dtype):
    self.name, self.dtype = name, dtype


def _empty_ordered_dict(*args):
  if args:  # Only the empty backward-hooks dict is legitimate.
    raise TorchScriptError('collections.OrderedDict called with arguments')
  return collections.OrderedDict()


def _build_list(items):
  return list(items)


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler of `data.pkl` that maps known globals to local stand-ins and refuses the rest."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, name: str):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._name = archive, prefix, name
    self._storages: dict[str, np.ndarray] = {}
    self._classes: dict[str, type] = {}

  def find_class(self, module: str, name: str):
    if module == '__torch__' or module.startswith('__torch__.'):
      # Scripted module classes: a fresh inert subclass that only records its name.
      if not all(_IDENTIFIER.match(p) for p in module.split('.') + [name]):
        self._refuse(module, name)
      qualname = f'{module}.{name}'
      if qualname not in self._classes:
        self._classes[qualname] = type(name, (TorchScriptObject,), {'qualname': qualname})
      return self._classes[qualname]
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return self._rebuild_tensor
    if module == 'torch' and STORAGE_DTYPES.get(name) is not None:
      return _StorageType(name, STORAGE_DTYPES[name])
    if module == 'collections' and name == 'OrderedDict':
      return _empty_ordered_dict
    if module == 'torch.jit._pickle' and name in ('build_intlist', 'build_doublelist',
                                                  'build_boollist', 'build_tensorlist'):
      return _build_list
    self._refuse(module, name)

  def _refuse(self, module: str, name: str):
    raise TorchScriptError(
        f'{self._name}: refusing to load global {module}.{name} from data.pkl; a TorchScript '
        'weights file needs only __torch__ module classes, torch._utils._rebuild_tensor_v2, '
        'torch.*Storage and collections.OrderedDict. The file is corrupt or malicious.')

  def persistent_load(self, pid):
    # ('storage', storage_type, key, location, numel): a raw buffer in <prefix>/data/<key>.
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != 'storage'
        or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
        or not isinstance(pid[4], int)):
      raise TorchScriptError(f'{self._name}: unexpected persistent id {pid!r} in data.pkl')
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if key not in self._storages:
      member = f'{self._prefix}data/{key}'
      try:
        raw = self._archive.read(member)
      except KeyError:
        raise TorchScriptError(f'{self._name}: storage {member} is missing from the archive') \
            from None
      need = numel * storage_type.dtype.itemsize
      if len(raw) < need:
        raise TorchScriptError(f'{self._name}: storage {member} has {len(raw)} bytes, '
                               f'expected {need} ({numel} x {storage_type.name}); truncated?')
      self._storages[key] = np.frombuffer(raw, storage_type.dtype, count=numel)
    return self._storages[key]

  def _rebuild_tensor(self, storage, offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata  # Irrelevant to the values.
    if not isinstance(storage, np.ndarray):
      raise TorchScriptError(f'{self._name}: tensor without a storage in data.pkl')
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
      raise TorchScriptError(f'{self._name}: bad tensor size {size} / stride {stride}')
    if 0 in size:
      return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= storage.size:
      raise TorchScriptError(f'{self._name}: tensor (offset {offset}, size {size}, stride '
                             f'{stride}) reads past its storage of {storage.size} elements')
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride],
        writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder('='))  # Own, native-order copy.


def _open(source: str | os.PathLike | bytes, name: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
  except (zipfile.BadZipFile, EOFError) as e:
    raise TorchScriptError(f'{name}: not a TorchScript archive (zip): {e}; the file is '
                           'truncated or corrupt, delete it and fetch it again') from None


def _name(source, name: str | None) -> str:
  if name is not None:
    return name
  return '<bytes>' if isinstance(source, bytes) else os.fspath(source)


def read(source: str | os.PathLike | bytes, name: str | None = None) -> Any:
  """Unpickles the module tree of a TorchScript archive (path or bytes) without torch.

  Args:
    source: the archive, as a path or its bytes.
    name: how errors name the file (default: the path, or '<bytes>').

  Returns:
    The root object (a `TorchScriptObject`); tensors are numpy arrays in their original
    layout (e.g. conv weights OIHW) and dtype.

  Raises:
    TorchScriptError: not a zip, truncated, no data.pkl, refused global, bad storage.
  """
  name = _name(source, name)
  with _open(source, name) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl') and n.count('/') <= 1]
    if len(pickles) != 1:
      raise TorchScriptError(f'{name}: expected exactly one <prefix>/data.pkl in the archive, '
                             f'found {pickles or "none"}')
    prefix = pickles[0][:-len('data.pkl')]
    try:
      data = archive.read(pickles[0])
      return _RestrictedUnpickler(data, archive, prefix, name).load()
    except TorchScriptError:
      raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, zlib.error) as e:
      raise TorchScriptError(f'{name}: corrupt archive ({type(e).__name__}: {e}); delete it '
                             'and fetch it again') from None


def walk(obj: Any, path: str = '') -> Iterator[tuple[str, TorchScriptObject]]:
  """Yields (dotted path, object) for `obj` and every module below it, depth-first in file order."""
  if isinstance(obj, TorchScriptObject):
    yield path, obj
    for key, value in obj.state.items():
      yield from walk(value, f'{path}.{key}' if path else key)
  elif isinstance(obj, (list, tuple)):
    for i, value in enumerate(obj):
      yield from walk(value, f'{path}[{i}]')


def read_sources(source: str | os.PathLike | bytes, name: str | None = None) -> dict[str, str]:
  """The archive's TorchScript source files as {module name: text}, e.g. '__torch__.inceptionv3'
  for `<prefix>/code/__torch__/inceptionv3.py` (the prefix of the classes it defines)."""
  name = _name(source, name)
  sources = {}
  with _open(source, name) as archive:
    for member in archive.namelist():
      _, sep, module = member.partition('/code/')
      if sep and module.endswith('.py'):
        try:
          sources[module[:-3].replace('/', '.')] = archive.read(member).decode('utf-8')
        except (UnicodeDecodeError, zipfile.BadZipFile, zlib.error) as e:
          raise TorchScriptError(f'{name}: cannot read {member}: {e}') from None
  if not sources:
    raise TorchScriptError(f'{name}: no TorchScript source (<prefix>/code/*.py) in the archive')
  return sources


def concatenations(sources: dict[str, str], name: str = '<archive>') -> dict[str, list[str]]:
  """{class qualname: the submodules whose outputs its `forward` concatenates, in order}.

  Covers every class whose forward returns `torch.cat(xs, dim)`, where each element of xs is
  (after local assignments and `torch.contiguous`) `m.forward(...)` with `m = self.<attribute>`;
  the attribute names are returned. The source is parsed with `ast`, never run.

  Raises:
    TorchScriptError: a source that does not parse, or a concatenated element whose producing
      submodule cannot be told (names the class and the expression).
  """
  found = {}
  for module, text in sources.items():
    try:
      tree = ast.parse(text)
    except SyntaxError as e:
      raise TorchScriptError(f'{name}: code of {module} does not parse: {e}') from None
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
      forward = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == 'forward']
      if forward:
        where = f'{module}.{cls.name}'
        order = _concatenated_submodules(forward[0], f'{name}: {where}.forward')
        if order is not None:
          found[where] = order
  return found


def _concatenated_submodules(forward: ast.FunctionDef, where: str) -> list[str] | None:
  local = {}  # name -> the expression last assigned to it
  for statement in forward.body:
    if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)):
      local[statement.targets[0].id] = statement.value
  returns = [s.value for s in forward.body if isinstance(s, ast.Return)]
  if len(returns) != 1 or not _is_call(returns[0], 'torch', 'cat'):
    return None

  def resolve(expr):
    while isinstance(expr, ast.Name) and expr.id in local:
      expr = local[expr.id]
    return expr

  items = resolve(returns[0].args[0])  # _is_call: torch.cat has an argument.
  if not isinstance(items, (ast.List, ast.Tuple)):
    raise TorchScriptError(f'{where}: torch.cat of {ast.unparse(returns[0])}: not a list')
  order = []
  for item in items.elts:
    expr = resolve(item)
    while _is_call(expr, 'torch', 'contiguous'):
      expr = resolve(expr.args[0])
    module = None
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == 'forward'):
      module = resolve(expr.func.value)
    if not (isinstance(module, ast.Attribute) and isinstance(module.value, ast.Name)
            and module.value.id == 'self'):
      raise TorchScriptError(f'{where}: cannot tell which submodule produces the concatenated '
                             f'{ast.unparse(item)} (= {ast.unparse(expr)})')
    order.append(module.attr)
  return order


def _is_call(expr, owner: str, function: str) -> bool:
  """Whether expr is `owner.function(...)`, e.g. torch.cat(...)."""
  return (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
          and expr.func.attr == function and isinstance(expr.func.value, ast.Name)
          and expr.func.value.id == owner and bool(expr.args))
