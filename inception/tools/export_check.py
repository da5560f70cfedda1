"""Runs one exported artefact with its own runtime on given images, outside the project: the
check `inception.tools.export` runs in a subprocess for each artefact.

    python -P export_check.py REQUEST.json      # -P: the script's folder is not importable

It imports nothing of the project (it refuses to: importing 'inception', 'data' or 'configs'
raises, and it asserts at its end that none was imported), only numpy and the artefact's
runtime: tensorflow (savedmodel), onnxruntime (onnx), ai_edge_litert (tflite).

REQUEST, JSON: {"format": "savedmodel" | "onnx" | "tflite", "path": the artefact,
"images": an .npz whose 'images' is uint8 [N, S, S, 3], "files": image files (savedmodel: also
run `predict_image_bytes` on their bytes) or null, "batch_size": images per call,
"latency": {"<batch>": timed runs, ...}, "warmup": untimed runs first, "threads": the runtime's
intra-op threads (null: its default), "output": .npz to write, "report": .json to write}.

Writes `output`: 'probabilities' float32 [N, K] (and 'probabilities_bytes' [len(files), K]);
`report`: the runtime and its version, the artefact's inputs and outputs, `latency`
{"<batch>": {"median_s_per_image", "runs", "sequential"}} (a fixed-batch-1 model runs a batch
as that many calls: "sequential" true), and what the artefact itself says (SavedModel assets).
Any failure exits non-zero with the reason on stderr.
"""

import importlib.abc
import json
import os
import statistics
import sys
import time

PROJECT = ('inception', 'data', 'configs')


class _RefuseProject(importlib.abc.MetaPathFinder):
  """Makes importing the project fail loudly (the editable install would find it)."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname.split('.')[0] in PROJECT:
      raise ImportError(f'export_check must not import the project ({fullname})')
    return None


import numpy as np  # pylint: disable=wrong-import-position


def _timed(call, batch, runs: int, warmup: int) -> float:
  """Median seconds of `call(batch)` over `runs` calls, after `warmup` untimed ones."""
  for _ in range(warmup):
    call(batch)
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    call(batch)
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _batches(images, size):
  for i in range(0, len(images), size):
    yield images[i:i + size]


def _savedmodel(req, images, files):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if req.get('threads'):
    tf.config.threading.set_intra_op_parallelism_threads(req['threads'])
  model = tf.saved_model.load(req['path'])
  serve = model.signatures['serving_default']
  by_bytes = model.signatures['predict_image_bytes']

  def run(x):
    return serve(images=tf.constant(x))['probabilities'].numpy()

  out = {'probabilities': np.concatenate([run(b) for b in _batches(images, req['batch_size'])])}
  if files:
    blobs = [open(f, 'rb').read() for f in files]
    out['probabilities_bytes'] = np.concatenate([
        by_bytes(image_bytes=tf.constant(blobs[i:i + req['batch_size']]))['probabilities']
        .numpy() for i in range(0, len(blobs), req['batch_size'])])

  def spec(s):
    return {'dtype': s.dtype.name, 'shape': s.shape.as_list()}

  signatures = {}
  for key in ('serving_default', 'predict_image_bytes'):
    sig = model.signatures[key]
    signatures[key] = {'inputs': {k: spec(v) for k, v in sig.structured_input_signature[1].items()},
                       'outputs': {k: spec(v) for k, v in sig.structured_outputs.items()}}
  assets = os.path.join(req['path'], 'assets')
  with open(os.path.join(assets, 'class_names.txt')) as f:
    class_names = f.read().splitlines()
  report = {'runtime': 'tensorflow', 'version': tf.__version__, 'signatures': signatures,
            'class_names': class_names,
            'assets': sorted(os.listdir(assets))}
  return run, out, report, False


def _onnx(req, images, files):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  if req.get('threads'):
    options.intra_op_num_threads = req['threads']
  session = ort.InferenceSession(req['path'], options, providers=['CPUExecutionProvider'])
  (inp,) = session.get_inputs()

  def run(x):
    return session.run(['probabilities'], {inp.name: x})[0]

  out = {'probabilities': np.concatenate([run(b) for b in _batches(images, req['batch_size'])])}
  meta = session.get_modelmeta().custom_metadata_map
  report = {'runtime': 'onnxruntime', 'version': ort.__version__,
            'inputs': {i.name: {'dtype': i.type, 'shape': i.shape} for i in session.get_inputs()},
            'outputs': {o.name: {'dtype': o.type, 'shape': o.shape}
                        for o in session.get_outputs()},
            'metadata': dict(meta)}
  return run, out, report, False


def _tflite(req, images, files):
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  import ai_edge_litert  # pylint: disable=g-import-not-at-top
  itp = litert.Interpreter(model_path=req['path'], num_threads=req.get('threads') or None)
  runner = itp.get_signature_runner('serving_default')
  details = runner.get_input_details()['images']
  fixed = int(details['shape'][0])

  def run(x):
    # A fixed-batch model (resizing its input is not safe: its reshapes are static) runs a
    # larger batch as one call per `fixed` images.
    return np.concatenate([runner(images=x[i:i + fixed])['probabilities']
                           for i in range(0, len(x), fixed)])

  out = {'probabilities': run(images)}
  report = {'runtime': 'ai_edge_litert', 'version': getattr(ai_edge_litert, '__version__', None),
            'inputs': {k: {'dtype': np.dtype(v['dtype']).name, 'shape': v['shape'].tolist()}
                       for k, v in runner.get_input_details().items()},
            'outputs': {k: {'dtype': np.dtype(v['dtype']).name, 'shape': v['shape'].tolist()}
                        for k, v in runner.get_output_details().items()}}
  return run, out, report, fixed


def main(argv) -> int:
  if len(argv) != 2:
    print(f'usage: python -P {argv[0]} REQUEST.json', file=sys.stderr)
    return 2
  sys.meta_path.insert(0, _RefuseProject())  # Before any runtime is imported.
  with open(argv[1]) as f:
    req = json.load(f)
  images = np.load(req['images'])['images']
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'{req["images"]}: images must be uint8 [N, S, S, 3], not '
                     f'{images.dtype} {images.shape}')
  loaders = {'savedmodel': _savedmodel, 'onnx': _onnx, 'tflite': _tflite}
  if req['format'] not in loaders:
    raise ValueError(f'format {req["format"]!r} is not one of {sorted(loaders)}')
  t = time.perf_counter()
  run, out, report, fixed = loaders[req['format']](req, images, req.get('files'))
  report['check_s'] = time.perf_counter() - t
  latency = {}
  for batch, runs in req.get('latency', {}).items():
    x = np.resize(images, (int(batch),) + images.shape[1:])  # Repeats images when N < batch.
    seconds = _timed(run, x, int(runs), int(req.get('warmup', 2)))
    latency[batch] = {'median_s_per_image': seconds / int(batch), 'runs': int(runs),
                      'sequential': bool(fixed and fixed < int(batch))}
  report.update(latency=latency, threads=req.get('threads'), cpu_count=os.cpu_count())
  np.savez(req['output'], **out)
  imported = sorted(m for m in sys.modules if m.split('.')[0] in PROJECT)
  assert not imported, f'export_check imported project modules: {imported}'
  report['project_modules_imported'] = imported
  with open(req['report'], 'w') as f:
    json.dump(report, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
