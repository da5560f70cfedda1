"""JAX -> ONNX for inference functions built from the primitives this project's models use: the
function's jaxpr is walked and each primitive written as ONNX ops (opset 18), with symbolic
dimensions (a polymorphic batch) kept symbolic.

    model = to_onnx(lambda consts, images: ..., consts,
                    {'images': jax.ShapeDtypeStruct((batch, 150, 150, 3), jnp.uint8)},
                    output_names=['probabilities'])

Why a converter of our own (measured, docs/export.md): jax2onnx >= 0.13 requires
orbax-checkpoint < 0.11.37 (the project needs >= 0.12.8); jax2onnx 0.12.5 patches flax's
max_pool with a signature flax no longer calls, writes reduce_window_max as a MaxPool over the
batch and channel axes, and has no rule for jax 0.10's `stack`; tf2onnx cannot read jax2tf's
SavedModels (their XlaCallModule op).

- Whatever depends on `consts` alone (BatchNorm scales, the fused 1x1 kernels, gather indices)
  is evaluated with JAX at export time and stored as an initialiser: the graph holds only what
  depends on the inputs, and those values are JAX's bit for bit.
- Layout: every value carries the permutation it is stored in (physical axis i holds logical
  axis perm[i]); convolutions and pools keep NCHW between them, elementwise ops and concats
  follow their operands, and a Transpose is written only where an op needs another layout (a
  reshape, a matmul, the outputs).
- A primitive without a rule raises NotImplementedError naming it: nothing is approximated
  silently. bfloat16 is refused (onnxruntime's CPU kernels have no bfloat16 convolutions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from jax.extend import core as jcore
from onnx import helper
from onnx import numpy_helper

OPSET = 18
IR_VERSION = 9  # What onnxruntime >= 1.16 reads; opset 18 needs no newer one.
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
# A folded constant may grow over its inputs by this much (broadcasts) before it is written
# as an op instead, so that a broadcast scalar does not become a large initialiser.
_FOLD_GROWTH = 4
_FOLD_MIN = 1 << 16

_CALLS = ('jit', 'pjit', 'closed_call', 'core_call', 'custom_jvp_call', 'custom_vjp_call',
          'custom_vjp_call_jaxpr', 'remat', 'checkpoint', 'custom_lin')
_BINARY = {'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max', 'min': 'Min',
           'pow': 'Pow', 'eq': 'Equal', 'lt': 'Less', 'le': 'LessOrEqual', 'gt': 'Greater',
           'ge': 'GreaterOrEqual', 'and': 'And', 'or': 'Or', 'xor': 'Xor', 'rem': 'Mod'}
_UNARY = {'neg': 'Neg', 'exp': 'Exp', 'log': 'Log', 'abs': 'Abs', 'sign': 'Sign',
          'sqrt': 'Sqrt', 'logistic': 'Sigmoid', 'tanh': 'Tanh', 'floor': 'Floor',
          'ceil': 'Ceil', 'erf': 'Erf', 'not': 'Not', 'sin': 'Sin', 'cos': 'Cos'}
_IDENTITY = ('stop_gradient', 'copy', 'copy_p', 'optimization_barrier', 'reduce_precision')
_REDUCE = {'reduce_sum': 'ReduceSum', 'reduce_max': 'ReduceMax', 'reduce_min': 'ReduceMin',
           'reduce_prod': 'ReduceProd'}


@dataclasses.dataclass
class _Val:
  """A jaxpr value: `const` (its logical value, known at export) or ONNX tensor `name` stored
  with axes `perm` (physical axis i = logical axis perm[i])."""
  shape: tuple
  dtype: np.dtype
  name: str | None = None
  const: np.ndarray | None = None
  perm: tuple[int, ...] = ()

  def __post_init__(self):
    if not self.perm:
      self.perm = tuple(range(len(self.shape)))


def _is_static(shape) -> bool:
  return all(isinstance(d, (int, np.integer)) for d in shape)


def _inverse(perm) -> list[int]:
  return [perm.index(i) for i in range(len(perm))]


def _onnx_dtype(dtype) -> int:
  dtype = np.dtype(dtype)
  if dtype == jnp.bfloat16:
    raise NotImplementedError('bfloat16 values cannot be exported to ONNX for onnxruntime\'s CPU '
                              'kernels; export a float32 run (model.dtype=float32)')
  return helper.np_dtype_to_tensor_dtype(dtype)


def _sub_jaxpr(params: dict):
  for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
    j = params.get(key)
    if isinstance(j, jcore.ClosedJaxpr):
      return j.jaxpr, j.consts
    if isinstance(j, jcore.Jaxpr):
      return j, []
  raise NotImplementedError(f'no inner jaxpr in call params {sorted(params)}')


class _Builder:
  """Accumulates nodes and initialisers while a jaxpr is interpreted."""

  def __init__(self, const_names: Mapping[int, str]):
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []
    self._const_names = dict(const_names)  # id(array) -> name, for the given constants.
    self._emitted: dict[tuple[int, tuple], str] = {}
    self._keep: list[Any] = []  # Keeps folded arrays alive: `_emitted` keys on their id.
    self._count = 0
    self.symbols: list[tuple[Any, str, int]] = []  # (symbolic dim, input name, axis)

  def fresh(self, hint: str) -> str:
    self._count += 1
    return f'{hint}_{self._count}'

  def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> list[str]:
    outs = [self.fresh(op.lower()) for _ in range(n_out)]
    self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh('n_' + op),
                                       **attrs))
    return outs

  def one(self, op: str, inputs: Sequence[str], **attrs) -> str:
    return self.node(op, inputs, **attrs)[0]

  def constant(self, array: np.ndarray, perm: tuple[int, ...] | None = None) -> str:
    """The initialiser holding `array` transposed to `perm` (written once per layout)."""
    array = np.asarray(array)
    perm = tuple(range(array.ndim)) if perm is None else tuple(perm)
    key = (id(array), perm)
    if key not in self._emitted:
      base = self._const_names.get(id(array), self.fresh('const'))
      name = base if perm == tuple(range(array.ndim)) else f'{base}:{"".join(map(str, perm))}'
      _onnx_dtype(array.dtype)
      self.initializers.append(numpy_helper.from_array(
          np.transpose(array, perm).copy(order='C'), name))  # Not ascontiguousarray: 0-d stays.
      self._keep.append(array)
      self._emitted[key] = name
    return self._emitted[key]

  def ints(self, values: Sequence[int]) -> str:
    return self.constant(np.asarray(list(values), np.int64))

  def physical(self, v: _Val, perm: Sequence[int]) -> str:
    """`v` stored with axes `perm`."""
    perm = tuple(perm)
    if v.const is not None:
      return self.constant(v.const, perm)
    if v.perm == perm:
      return v.name
    return self.one('Transpose', [v.name], perm=[v.perm.index(p) for p in perm])

  def logical(self, v: _Val) -> str:
    return self.physical(v, tuple(range(len(v.shape))))

  def dim(self, d) -> str:
    """int64 [1] tensor holding dimension `d` (static or one of the inputs' symbols)."""
    if isinstance(d, (int, np.integer)):
      return self.ints([int(d)])
    for sym, name, axis in self.symbols:
      if d == sym:
        return self.one('Shape', [name], start=axis, end=axis + 1)
    raise NotImplementedError(f'symbolic dimension {d} is not an input dimension; only '
                              'dimensions the inputs have may be symbolic')

  def shape(self, dims: Sequence) -> str:
    if _is_static(dims):
      return self.ints([int(d) for d in dims])
    return self.one('Concat', [self.dim(d) for d in dims], axis=0)


def _fold(eqn, ins: list[_Val]) -> list[np.ndarray] | None:
  """The outputs of `eqn` evaluated with JAX when all its inputs are constants (and the
  outputs static and not much larger); else None."""
  if any(v.const is None for v in ins):
    return None
  outs = [o.aval for o in eqn.outvars]
  if not all(_is_static(a.shape) for a in outs):
    return None
  size_in = sum(v.const.size for v in ins)
  size_out = sum(int(np.prod(a.shape, dtype=np.int64)) for a in outs)
  if size_out > max(_FOLD_GROWTH * size_in, _FOLD_MIN):
    return None
  with jax.default_device(jax.devices('cpu')[0]):
    res = eqn.primitive.bind(*[jnp.asarray(v.const) for v in ins], **eqn.params)
  res = res if eqn.primitive.multiple_results else [res]
  return [np.asarray(r) for r in res]


def _drop_axes(perm: tuple[int, ...], axes: Sequence[int]) -> tuple[int, ...]:
  """The perm of a value stored as `perm` after logical `axes` are removed."""
  kept = [p for p in perm if p not in axes]
  order = sorted(kept)
  return tuple(order.index(p) for p in kept)


def _common_perm(ins: list[_Val], rank: int) -> tuple[int, ...]:
  for v in ins:
    if v.const is None and len(v.shape) == rank:
      return v.perm
  return tuple(range(rank))


class _Interpreter:
  """Runs a jaxpr over `_Val`s, writing ONNX nodes into a `_Builder`."""

  def __init__(self, b: _Builder):
    self.b = b

  def run(self, jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[_Val]) -> list[_Val]:
    env: dict[Any, _Val] = {}

    def read(var) -> _Val:
      if isinstance(var, jcore.Literal):
        val = np.asarray(var.val, dtype=var.aval.dtype)
        return _Val(val.shape, val.dtype, const=val)
      return env[var]

    for var, c in zip(jaxpr.constvars, consts):
      c = np.asarray(c)
      env[var] = _Val(c.shape, c.dtype, const=c)
    for var, a in zip(jaxpr.invars, args):
      env[var] = a
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      outs = self.eqn(eqn, ins)
      for var, out in zip(eqn.outvars, outs):
        if not isinstance(var, jcore.DropVar):
          env[var] = out
    return [read(v) for v in jaxpr.outvars]

  def eqn(self, eqn, ins: list[_Val]) -> list[_Val]:
    name = eqn.primitive.name
    if name in _CALLS:
      inner, consts = _sub_jaxpr(eqn.params)
      return self.run(inner, consts, ins)
    folded = _fold(eqn, ins)
    if folded is not None:
      return [_Val(f.shape, f.dtype, const=f) for f in folded]
    for a in [o.aval for o in eqn.outvars] + [v for v in ins]:
      _onnx_dtype(a.dtype)
    rule = getattr(self, f'_{name}', None)
    if name in _BINARY:
      rule = self._binary
    elif name in _UNARY:
      rule = self._unary
    elif name in _IDENTITY:
      rule = self._identity
    elif name in _REDUCE:
      rule = self._reduce
    if rule is None:
      raise NotImplementedError(
          f'JAX primitive {name!r} has no ONNX rule in {__name__} (params '
          f'{sorted(eqn.params)}); add one there, or export another format')
    out_avals = [o.aval for o in eqn.outvars]
    res = rule(eqn, ins, out_avals)
    return res if isinstance(res, list) else [res]

  # ---- helpers -------------------------------------------------------------------------------

  def _out(self, aval, name: str, perm=None) -> _Val:
    return _Val(tuple(aval.shape), np.dtype(aval.dtype), name=name,
                perm=tuple(perm) if perm is not None else ())

  def _operands(self, ins: list[_Val], rank: int) -> tuple[list[str], tuple[int, ...]]:
    """Names of `ins` in one common layout (rank-0 operands broadcast as they are)."""
    perm = _common_perm(ins, rank)
    return [self.b.physical(v, perm if len(v.shape) == rank else ()) for v in ins], perm

  # ---- elementwise ---------------------------------------------------------------------------

  def _binary(self, eqn, ins, avals):
    op = _BINARY[eqn.primitive.name]
    if op in ('And', 'Or', 'Xor') and np.dtype(avals[0].dtype) != np.bool_:
      op = 'Bitwise' + op
    names, perm = self._operands(ins, len(avals[0].shape))
    if op == 'Mod' and np.issubdtype(avals[0].dtype, np.floating):
      return self._out(avals[0], self.b.one('Mod', names, fmod=1), perm)
    return self._out(avals[0], self.b.one(op, names), perm)

  def _ne(self, eqn, ins, avals):
    names, perm = self._operands(ins, len(avals[0].shape))
    return self._out(avals[0], self.b.one('Not', [self.b.one('Equal', names)]), perm)

  def _unary(self, eqn, ins, avals):
    (x,) = ins
    return self._out(avals[0], self.b.one(_UNARY[eqn.primitive.name], [x.name]), x.perm)

  def _identity(self, eqn, ins, avals):
    return ins[:len(avals)]

  def _rsqrt(self, eqn, ins, avals):
    (x,) = ins
    return self._out(avals[0], self.b.one('Reciprocal', [self.b.one('Sqrt', [x.name])]), x.perm)

  def _log1p(self, eqn, ins, avals):
    # ONNX has no Log1p: log(1 + x) loses digits for |x| < ~1e-7 (absolute error <= 1.2e-7).
    (x,) = ins
    one = self.b.constant(np.ones((), x.dtype))
    return self._out(avals[0], self.b.one('Log', [self.b.one('Add', [x.name, one])]), x.perm)

  def _expm1(self, eqn, ins, avals):
    (x,) = ins
    one = self.b.constant(np.ones((), x.dtype))
    return self._out(avals[0], self.b.one('Sub', [self.b.one('Exp', [x.name]), one]), x.perm)

  def _square(self, eqn, ins, avals):
    (x,) = ins
    return self._out(avals[0], self.b.one('Mul', [x.name, x.name]), x.perm)

  def _integer_pow(self, eqn, ins, avals):
    (x,) = ins
    y = self.b.constant(np.asarray(eqn.params['y'], x.dtype))
    return self._out(avals[0], self.b.one('Pow', [x.name, y]), x.perm)

  def _is_finite(self, eqn, ins, avals):
    (x,) = ins
    bad = self.b.one('Or', [self.b.one('IsInf', [x.name]), self.b.one('IsNaN', [x.name])])
    return self._out(avals[0], self.b.one('Not', [bad]), x.perm)

  def _convert_element_type(self, eqn, ins, avals):
    (x,) = ins
    return self._out(avals[0], self.b.one('Cast', [x.name], to=_onnx_dtype(avals[0].dtype)),
                     x.perm)

  def _select_n(self, eqn, ins, avals):
    pred, *cases = ins
    if len(cases) != 2 or np.dtype(pred.dtype) != np.bool_:
      raise NotImplementedError('select_n with other than a boolean predicate and two cases')
    names, perm = self._operands([pred, cases[1], cases[0]], len(avals[0].shape))
    return self._out(avals[0], self.b.one('Where', names), perm)

  def _clamp(self, eqn, ins, avals):
    lo, x, hi = ins
    names, perm = self._operands([x, lo, hi], len(avals[0].shape))
    return self._out(avals[0], self.b.one('Min', [self.b.one('Max', names[:2]), names[2]]), perm)

  # ---- shapes --------------------------------------------------------------------------------

  def _broadcast_in_dim(self, eqn, ins, avals):
    x = ins[0]
    if len(ins) > 1:
      raise NotImplementedError('broadcast_in_dim with dynamic shape operands')
    shape, bdims = eqn.params['shape'], eqn.params['broadcast_dimensions']
    name = self.b.logical(x)
    new = [i for i in range(len(shape)) if i not in bdims]
    if new:
      name = self.b.one('Unsqueeze', [name, self.b.ints(new)])
    target = [1 if i in bdims and x.shape[bdims.index(i)] == shape[i] else shape[i]
              for i in range(len(shape))]
    if any(t != 1 for t in target):
      name = self.b.one('Expand', [name, self.b.shape(target)])
    return self._out(avals[0], name)

  def _reshape(self, eqn, ins, avals):
    x = ins[0]
    if eqn.params.get('dimensions') is not None or len(ins) > 1:
      raise NotImplementedError('reshape with dimensions or dynamic shape operands')
    sizes = eqn.params['new_sizes']
    symbolic = [i for i, d in enumerate(sizes) if not isinstance(d, (int, np.integer))]
    if len(symbolic) == 1:  # Reshape infers the one -1.
      shape = self.b.ints([-1 if i in symbolic else int(d) for i, d in enumerate(sizes)])
    else:
      shape = self.b.shape(sizes)
    return self._out(avals[0], self.b.one('Reshape', [self.b.logical(x), shape]))

  def _squeeze(self, eqn, ins, avals):
    (x,) = ins
    dims = tuple(eqn.params['dimensions'])
    phys = sorted(x.perm.index(d) for d in dims)
    return self._out(avals[0], self.b.one('Squeeze', [x.name, self.b.ints(phys)]),
                     _drop_axes(x.perm, dims))

  def _transpose(self, eqn, ins, avals):
    (x,) = ins
    p = tuple(eqn.params['permutation'])
    # Nothing moves: the new logical axis i is the old logical axis p[i].
    return self._out(avals[0], x.name, tuple(p.index(q) for q in x.perm))

  def _concatenate(self, eqn, ins, avals):
    names, perm = self._operands(ins, len(avals[0].shape))
    return self._out(avals[0], self.b.one('Concat', names,
                                          axis=perm.index(eqn.params['dimension'])), perm)

  def _stack(self, eqn, ins, avals):
    axis = eqn.params['axis']
    parts = [self.b.one('Unsqueeze', [self.b.logical(v), self.b.ints([axis])]) for v in ins]
    return self._out(avals[0], self.b.one('Concat', parts, axis=axis))

  def _slice_axes(self, x: _Val, starts: dict, limits: dict, steps: dict | None = None) -> str:
    """x sliced on logical axes (start, limit[, step] per axis; limit None = to the end)."""
    axes = sorted(starts)
    if not axes:
      return x.name
    steps = steps or {}
    return self.b.one('Slice', [
        x.name, self.b.ints([starts[a] for a in axes]),
        self.b.ints([_INT64_MAX if limits[a] is None else limits[a] for a in axes]),
        self.b.ints([x.perm.index(a) for a in axes]),
        self.b.ints([steps.get(a, 1) for a in axes])])

  def _slice(self, eqn, ins, avals):
    x = ins[0]
    p = eqn.params
    strides = p['strides'] or (1,) * len(x.shape)
    starts, limits, steps = {}, {}, {}
    for a, (s, l, st) in enumerate(zip(p['start_indices'], p['limit_indices'], strides)):
      full = bool(l == x.shape[a])
      if s == 0 and full and st == 1:
        continue
      starts[a], limits[a], steps[a] = int(s), None if full else int(l), int(st)
    return self._out(avals[0], self._slice_axes(x, starts, limits, steps), x.perm)

  def _rev(self, eqn, ins, avals):
    (x,) = ins
    dims = eqn.params['dimensions']
    starts = {a: -1 for a in dims}
    return self._out(avals[0], self._slice_axes(x, starts, {a: _INT64_MIN for a in dims},
                                                {a: -1 for a in dims}), x.perm)

  def _window_slice(self, x: _Val, starts: Sequence[int], sizes: Sequence, collapse: Sequence[int],
                    avals) -> _Val:
    """x[starts : starts + sizes] (logical), with `collapse` axes (size 1) removed."""
    st, lim = {}, {}
    for a, (s, n) in enumerate(zip(starts, sizes)):
      if isinstance(n, (int, np.integer)) and isinstance(x.shape[a], (int, np.integer)):
        s = int(min(max(int(s), 0), x.shape[a] - n))  # XLA clamps starts into range.
        if s == 0 and n == x.shape[a]:
          continue
        st[a], lim[a] = s, s + int(n)
      elif bool(n == x.shape[a]):
        continue  # A whole symbolic axis.
      else:
        raise NotImplementedError(f'a window of size {n} of a symbolic axis {x.shape[a]}')
    name = self._slice_axes(x, st, lim)
    if collapse:
      phys = sorted(x.perm.index(a) for a in collapse)
      return self._out(avals[0], self.b.one('Squeeze', [name, self.b.ints(phys)]),
                       _drop_axes(x.perm, collapse))
    return self._out(avals[0], name, x.perm)

  def _gather(self, eqn, ins, avals):
    x, idx = ins
    dn = eqn.params['dimension_numbers']
    if idx.const is None or idx.const.ndim != 1 or dn.operand_batching_dims:
      raise NotImplementedError('gather other than a window at constant indices (an index or '
                                'slice of constant position)')
    starts = [0] * len(x.shape)
    for k, axis in enumerate(dn.start_index_map):
      starts[axis] = int(idx.const[k])
    if tuple(dn.offset_dims) != tuple(range(len(avals[0].shape))):
      raise NotImplementedError(f'gather with offset_dims {dn.offset_dims}')
    return self._window_slice(x, starts, eqn.params['slice_sizes'], dn.collapsed_slice_dims,
                              avals)

  def _dynamic_slice(self, eqn, ins, avals):
    x, *starts = ins
    if any(s.const is None for s in starts):
      raise NotImplementedError('dynamic_slice at positions computed from the inputs')
    return self._window_slice(x, [int(s.const) for s in starts], eqn.params['slice_sizes'], (),
                              avals)

  def _pad(self, eqn, ins, avals):
    x, value = ins
    cfg = eqn.params['padding_config']
    if any(i != 0 or lo < 0 or hi < 0 for lo, hi, i in cfg):
      raise NotImplementedError('pad with interior or negative padding')
    pads = [cfg[p][0] for p in x.perm] + [cfg[p][1] for p in x.perm]
    return self._out(avals[0], self.b.one('Pad', [x.name, self.b.ints(pads),
                                                  self.b.logical(value)]), x.perm)

  # ---- reductions ----------------------------------------------------------------------------

  def _reduce(self, eqn, ins, avals):
    (x,) = ins
    axes = tuple(eqn.params['axes'])
    phys = sorted(x.perm.index(a) for a in axes)
    name = self.b.one(_REDUCE[eqn.primitive.name], [x.name, self.b.ints(phys)], keepdims=0)
    return self._out(avals[0], name, _drop_axes(x.perm, axes))

  def _argmax(self, eqn, ins, avals):
    (x,) = ins
    (axis,) = eqn.params['axes']
    name = self.b.one('ArgMax', [x.name], axis=x.perm.index(axis), keepdims=0,
                      select_last_index=0)
    name = self.b.one('Cast', [name], to=_onnx_dtype(avals[0].dtype))
    return self._out(avals[0], name, _drop_axes(x.perm, (axis,)))

  # ---- convolutions and pools ----------------------------------------------------------------

  def _conv_general_dilated(self, eqn, ins, avals):
    x, w = ins
    p = eqn.params
    dn = p['dimension_numbers']
    if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
      raise NotImplementedError('conv_general_dilated with lhs_dilation or batch groups')
    if any(lo < 0 or hi < 0 for lo, hi in p['padding']):
      raise NotImplementedError('conv_general_dilated with negative padding')
    name = self.b.one('Conv', [self.b.physical(x, dn.lhs_spec), self.b.physical(w, dn.rhs_spec)],
                      strides=list(p['window_strides']), dilations=list(p['rhs_dilation']),
                      pads=[lo for lo, _ in p['padding']] + [hi for _, hi in p['padding']],
                      group=p['feature_group_count'])
    return self._out(avals[0], name, dn.out_spec)

  def _pool_layout(self, x: _Val, p: dict) -> tuple[tuple[int, ...], list[int]]:
    """(N, C, spatial...) layout for a pool over x and the logical spatial axes."""
    if len(x.shape) < 3 or any(d != 1 for d in p['base_dilation']):
      raise NotImplementedError('reduce_window over fewer than 3 axes or with base dilation')
    trivial = [a for a in range(len(x.shape)) if p['window_dimensions'][a] == 1
               and p['window_strides'][a] == 1 and p['padding'][a] == (0, 0)
               and p['window_dilation'][a] == 1]
    if len(trivial) < 2:
      raise NotImplementedError('reduce_window over more than all but two axes')
    if set(x.perm[:2]) <= set(trivial):  # Already (N, C, ...), e.g. after a conv.
      return x.perm, list(x.perm[2:])
    nc = [trivial[0], trivial[-1]]  # NHWC: batch first, channels last.
    spatial = [a for a in range(len(x.shape)) if a not in nc]
    return tuple(nc + spatial), spatial

  def _reduce_window_max(self, eqn, ins, avals):
    (x,) = ins
    p = eqn.params
    perm, spatial = self._pool_layout(x, p)
    name = self.b.one('MaxPool', [self.b.physical(x, perm)],
                      kernel_shape=[p['window_dimensions'][a] for a in spatial],
                      strides=[p['window_strides'][a] for a in spatial],
                      dilations=[p['window_dilation'][a] for a in spatial],
                      pads=[p['padding'][a][0] for a in spatial] +
                      [p['padding'][a][1] for a in spatial])
    return self._out(avals[0], name, perm)

  def _reduce_window_sum(self, eqn, ins, avals):
    # A depthwise convolution with a kernel of ones: the sum itself (AveragePool * n would
    # round twice).
    (x,) = ins
    p = eqn.params
    perm, spatial = self._pool_layout(x, p)
    channels = x.shape[perm[1]]
    if not isinstance(channels, (int, np.integer)):
      raise NotImplementedError('reduce_window_sum over a symbolic channel axis')
    kernel = np.ones([int(channels), 1] + [p['window_dimensions'][a] for a in spatial], x.dtype)
    name = self.b.one('Conv', [self.b.physical(x, perm), self.b.constant(kernel)],
                      strides=[p['window_strides'][a] for a in spatial],
                      dilations=[p['window_dilation'][a] for a in spatial],
                      pads=[p['padding'][a][0] for a in spatial] +
                      [p['padding'][a][1] for a in spatial], group=int(channels))
    return self._out(avals[0], name, perm)

  # ---- matmul --------------------------------------------------------------------------------

  def _dot_general(self, eqn, ins, avals):
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
    if lb or rb or len(rhs.shape) != 2 or tuple(lc) != (len(lhs.shape) - 1,):
      raise NotImplementedError('dot_general other than [..., F] x [F, U] (or [U, F])')
    rhs_name = self.b.physical(rhs, (0, 1) if tuple(rc) == (0,) else (1, 0))
    return self._out(avals[0], self.b.one('MatMul', [self.b.logical(lhs), rhs_name]))


def to_onnx(fn: Callable, consts: Any, inputs: Mapping[str, jax.ShapeDtypeStruct], *,
            output_names: Sequence[str], metadata: Mapping[str, str] | None = None,
            model_name: str = 'model') -> onnx.ModelProto:
  """The ONNX model of `fn(consts, *inputs) -> output or tuple of outputs`.

  consts: a pytree of arrays baked in (initialisers named by their tree path, e.g.
    'params/head/logits/kernel', when used unchanged). inputs: name -> ShapeDtypeStruct, in
    `fn`'s argument order; symbolic dimensions (`jax.export.symbolic_shape`) stay symbolic,
    named as JAX prints them. metadata: the model's metadata_props.
  Raises NotImplementedError naming a primitive or form that has no rule here.
  """
  consts = jax.tree.map(np.asarray, jax.device_get(consts))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(consts)
  const_names = {id(v): '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
                 for path, v in leaves}
  specs = list(inputs.values())
  closed = jax.make_jaxpr(fn)(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                           consts), *specs)
  b = _Builder(const_names)
  args = [_Val(v.shape, v.dtype, const=v) for _, v in leaves]
  graph_inputs = []
  for name, spec in inputs.items():
    dims = []
    for axis, d in enumerate(spec.shape):
      if isinstance(d, (int, np.integer)):
        dims.append(int(d))
      else:
        dims.append(str(d))
        b.symbols.append((d, name, axis))
    graph_inputs.append(helper.make_tensor_value_info(name, _onnx_dtype(spec.dtype), dims))
    args.append(_Val(tuple(spec.shape), np.dtype(spec.dtype), name=name))
  outs = _Interpreter(b).run(closed.jaxpr, closed.consts, args)
  if len(outs) != len(output_names):
    raise ValueError(f'fn returns {len(outs)} outputs; output_names has {len(output_names)}')
  graph_outputs = []
  for name, v in zip(output_names, outs):
    b.nodes.append(helper.make_node('Identity', [b.logical(v)], [name], name=f'out_{name}'))
    dims = [d if isinstance(d, (int, np.integer)) else str(d) for d in v.shape]
    graph_outputs.append(helper.make_tensor_value_info(name, _onnx_dtype(v.dtype), dims))
  graph = helper.make_graph(b.nodes, model_name, graph_inputs, graph_outputs,
                            initializer=b.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                            producer_name='inception-flax', ir_version=IR_VERSION)
  for k, v in (metadata or {}).items():
    model.metadata_props.add(key=k, value=v)
  onnx.checker.check_model(model, full_check=False)
  return model
