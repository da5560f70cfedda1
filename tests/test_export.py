"""--mode=export end to end on a tiny run: SavedModel, ONNX and TFLite written, each checked by
its own runtime in a subprocess on the run's test split, and the artefacts' interfaces; the
JAX -> ONNX converter on the model variants the smoke run does not cover; bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from inception import paths
from inception import transfer
from inception.tools import export
from inception.tools import jaxpr_onnx
from inception.train import steps

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures('module_cache')


def _env():
  return {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A smoke run trained by the command line (2 classes, 75 px, 8 test images)."""
  workdir = tmp_path_factory.mktemp('export') / 'run'
  proc = subprocess.run([sys.executable, 'train.py', '--config', 'configs/smoke.py',
                         '--workdir', str(workdir)], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.fixture(scope='module')
def exported(run_dir):
  out_dir = run_dir.parent / 'exported'
  out = export.export(run_dir, formats=['savedmodel', 'onnx', 'tflite'], export_dir=out_dir,
                      latency_runs={1: 2, 32: 1}, log=lambda _: None)
  return out_dir, out


@pytest.mark.slow
def test_export_json_records_the_run_and_the_checks(exported, run_dir):
  out_dir, out = exported
  assert json.loads((out_dir / 'export.json').read_text()) == json.loads(json.dumps(out))
  assert out['workdir'] == str(run_dir.absolute()) and out['checkpoint'] == 'latest'
  assert out['step'] == 6 and out['class_names'] == ['stripes_000', 'stripes_090']
  assert (out['image_size'], out['preprocess'], out['tta'], out['temperature']) == (
      75, 'rescale', 'none', None)
  assert out['check']['split'] == 'test' and out['check']['num_images'] == 8
  assert out['errors'] == []
  assert set(out['artefacts']) == {'savedmodel', 'onnx', 'tflite'}
  for fmt, entry in out['artefacts'].items():
    checks = entry['checks']
    assert set(checks) == ({'images', 'image_bytes'} if fmt == 'savedmodel' else {'images'})
    for what, c in checks.items():
      assert c['agreement'] == 1.0 and c['max_abs_dp'] <= 1e-5, (fmt, what, c)
      assert c['meets_target'] and c['count'] == 8
    assert set(entry['latency']) == {'1', '32'}
    assert all(v['median_s_per_image'] > 0 for v in entry['latency'].values())
    assert entry['runtime']['project_modules_imported'] == []
    path = out_dir / entry['path']
    digest = export.tree_sha256(path) if path.is_dir() else paths.file_digest(path)
    assert entry['sha256'] == digest, fmt
  assert out['artefacts']['tflite']['latency']['32']['sequential']


@pytest.mark.slow
def test_savedmodel_signatures_and_assets(exported):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out_dir, out = exported
  path = out_dir / 'savedmodel'
  assert (path / 'assets' / 'class_names.txt').read_text().splitlines() == out['class_names']
  info = json.loads((path / 'assets' / 'model_info.json').read_text())
  assert info['image_size'] == 75 and info['class_names'] == out['class_names']
  model = tf.saved_model.load(str(path))
  assert set(model.signatures) == {'serving_default', 'predict_image_bytes'}
  serve = model.signatures['serving_default']
  (name, spec), = serve.structured_input_signature[1].items()
  assert name == 'images' and spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 75, 75, 3]
  (oname, ospec), = serve.structured_outputs.items()
  assert oname == 'probabilities' and ospec.dtype == tf.float32
  assert ospec.shape.as_list() == [None, 2]
  by_bytes = model.signatures['predict_image_bytes']
  (bname, bspec), = by_bytes.structured_input_signature[1].items()
  assert bname == 'image_bytes' and bspec.dtype == tf.string and bspec.shape.as_list() == [None]
  images = np.random.default_rng(0).integers(0, 256, (3, 75, 75, 3), dtype=np.uint8)
  p3 = serve(images=tf.constant(images))['probabilities'].numpy()
  p1 = serve(images=tf.constant(images[:1]))['probabilities'].numpy()
  assert p3.shape == (3, 2) and p1.shape == (1, 2)  # The batch is polymorphic.
  np.testing.assert_allclose(p3[:1], p1, atol=1e-6)
  np.testing.assert_allclose(p3.sum(-1), 1.0, atol=1e-6)
  assert [c.decode() for c in model.class_names.numpy()] == out['class_names']


@pytest.mark.slow
def test_onnx_and_tflite_interfaces(exported):
  import onnx  # pylint: disable=g-import-not-at-top
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
  out_dir, out = exported
  proto = onnx.load(str(out_dir / 'model.onnx'))
  (inp,), (outp,) = proto.graph.input, proto.graph.output
  dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
  assert inp.name == 'images' and dims == ['batch', 75, 75, 3]
  assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert outp.name == 'probabilities' and outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
  meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
  assert meta['class_names'] == out['class_names'] and meta['step'] == 6
  session = ort.InferenceSession(str(out_dir / 'model.onnx'), providers=['CPUExecutionProvider'])
  images = np.random.default_rng(1).integers(0, 256, (5, 75, 75, 3), dtype=np.uint8)
  p5 = session.run(None, {'images': images})[0]
  assert p5.shape == (5, 2)
  itp = interpreter.Interpreter(model_path=str(out_dir / 'model.tflite'))
  runner = itp.get_signature_runner('serving_default')
  detail = runner.get_input_details()['images']
  assert detail['dtype'] == np.uint8 and list(detail['shape']) == [1, 75, 75, 3]
  p1 = runner(images=images[:1])['probabilities']
  np.testing.assert_allclose(p1, p5[:1], atol=1e-5)


@pytest.mark.slow
def test_command_line_export_and_refusals(run_dir, tmp_path):
  base = [sys.executable, 'train.py', '--workdir', str(run_dir), '--mode=export']
  proc = subprocess.run(base + ['--format=onnx', f'--export_dir={tmp_path / "cli"}'], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / 'cli' / 'export.json').read_text())
  assert set(out['artefacts']) == {'onnx'} and out['artefacts']['onnx']['checks']['images'][
      'agreement'] == 1.0
  proc = subprocess.run(base + ['--format=onnx,pdf'], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 1
  assert "unknown 'pdf'" in proc.stderr and 'savedmodel, onnx, tflite' in proc.stderr


@pytest.mark.slow
def test_a_failing_artefact_is_recorded_and_raised(run_dir, tmp_path, monkeypatch):
  def refuse(m, path):
    raise export.ExportError('TFLiteConverter cannot convert this model: (test)')

  monkeypatch.setitem(export.WRITERS, 'tflite', refuse)
  with pytest.raises(export.ExportError, match='--format=tflite: TFLiteConverter cannot'):
    export.export(run_dir, formats=['tflite', 'onnx'], export_dir=tmp_path / 'e',
                  latency_runs={1: 1}, log=lambda _: None)
  out = json.loads((tmp_path / 'e' / 'export.json').read_text())
  assert 'cannot convert' in out['artefacts']['tflite']['error']
  assert out['artefacts']['onnx']['checks']['images']['meets_target']
  # An earlier export is replaced whole; a folder holding anything else is refused.
  export.export(run_dir, formats=['onnx'], export_dir=tmp_path / 'e', latency_runs={1: 1},
                log=lambda _: None)
  assert set(json.loads((tmp_path / 'e' / 'export.json').read_text())['artefacts']) == {'onnx'}
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='not empty and holds no export.json'):
    export.export(run_dir, formats=['onnx'], export_dir=tmp_path / 'other')


def test_unknown_or_empty_formats_are_refused_before_anything_runs(tmp_path):
  with pytest.raises(ValueError, match=r"unknown 'pdf'; valid formats: savedmodel, onnx, tflite"):
    export.export(tmp_path / 'no-such-run', formats=['savedmodel', 'pdf'])
  with pytest.raises(ValueError, match='--format is empty'):
    export.check_formats([])
  assert export.check_formats('tflite,SavedModel') == ('savedmodel', 'tflite')


def test_missing_workdir_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match='not the workdir of a trained run'):
    export.export(tmp_path / 'nothing', formats=['onnx'], log=lambda _: None)
  with pytest.raises(ValueError, match='--export_dir .* is a URI'):
    export.export(tmp_path, formats=['onnx'], export_dir='gs://bucket/e')


def test_tree_sha256_is_the_documented_hash(tmp_path):
  import hashlib  # pylint: disable=g-import-not-at-top
  (tmp_path / 'a').mkdir()
  (tmp_path / 'a' / 'x.bin').write_bytes(b'x')
  (tmp_path / 'b.txt').write_bytes(b'b')
  lines = sorted(f'{p} {hashlib.sha256(c).hexdigest()}\n' for p, c in [('a/x.bin', b'x'),
                                                                        ('b.txt', b'b')])
  assert export.tree_sha256(tmp_path) == hashlib.sha256(''.join(lines).encode()).hexdigest()


@pytest.mark.parametrize('classes,head,tta,temperature', [
    (3, 'flatten', 'flip', None),   # softmax, TTA's log-sum-exp, the flatten head.
    (2, 'gap', 'flip', 2.0),        # sigmoid head, temperature, mirrored view.
    (4, 'gap', 'none', 0.5),
])
def test_onnx_converter_matches_jax(classes, head, tta, temperature):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  c = smoke.get_config()
  c.model.head = head
  model = transfer.from_config(c, classes)
  variables = transfer.init_variables(model, 75, 0)
  # Logits large enough that the probabilities are far from uniform.
  variables['params']['head']['logits']['kernel'] = (
      variables['params']['head']['logits']['kernel'] * 50.0)

  def fn(v, images):
    return steps.predict_probabilities(model, v, images.astype(jnp.float32) / 127.5 - 1.0,
                                       tta=tta, temperature=temperature)

  (batch,) = jax.export.symbolic_shape('batch')
  proto = jaxpr_onnx.to_onnx(fn, variables,
                             {'images': jax.ShapeDtypeStruct((batch, 75, 75, 3), jnp.uint8)},
                             output_names=['probabilities'])
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  images = np.random.default_rng(2).integers(0, 256, (6, 75, 75, 3), dtype=np.uint8)
  got = session.run(None, {'images': images})[0]
  want = np.asarray(jax.jit(fn)(variables, images))
  assert got.shape == (6, classes)
  assert np.abs(want.max(-1) - 1 / classes).max() > 0.05  # Not a test of uniform outputs.
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_onnx_converter_names_what_it_cannot_convert():
  (batch,) = jax.export.symbolic_shape('batch')
  spec = {'x': jax.ShapeDtypeStruct((batch, 4), jnp.float32)}
  with pytest.raises(NotImplementedError, match="primitive 'cumsum'"):
    jaxpr_onnx.to_onnx(lambda c, x: jnp.cumsum(x, axis=1), {}, spec, output_names=['y'])
  with pytest.raises(NotImplementedError, match='bfloat16'):
    jaxpr_onnx.to_onnx(lambda c, x: x.astype(jnp.bfloat16), {}, spec, output_names=['y'])


@pytest.mark.slow
def test_the_runs_temperature_is_baked_in_and_recorded(run_dir, tmp_path):
  import dataclasses  # pylint: disable=g-import-not-at-top
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  from inception.tools import evaluate  # pylint: disable=g-import-not-at-top
  r = dataclasses.replace(evaluate.restore(run_dir, log=lambda _: None), temperature=3.0)
  m = export.model_of(r)
  assert m.info['temperature'] == 3.0
  export.write_onnx(m, tmp_path / 'm.onnx')
  images = np.random.default_rng(3).integers(0, 256, (4, 75, 75, 3), dtype=np.uint8)
  got = ort.InferenceSession(str(tmp_path / 'm.onnx'),
                             providers=['CPUExecutionProvider']).run(None, {'images': images})[0]
  variables = jax.device_get(r.variables)
  x = images.astype(np.float32) / 255.0  # The smoke run's 'rescale'.
  scaled = steps.predict_probabilities(r.model, variables, x, temperature=3.0)
  plain = steps.predict_probabilities(r.model, variables, x)
  np.testing.assert_allclose(got, scaled, atol=1e-6)
  assert np.abs(np.asarray(plain) - np.asarray(scaled)).max() > 1e-4
