"""Export a trained run's checkpoint for serving, each artefact checked on the run's own data by
its own runtime in a process that imports nothing of the project.

    python train.py --workdir W --mode=export [--checkpoint=best] \\
        --format=savedmodel,onnx[,tflite] [--export_dir D]

Every artefact computes `inception.train.steps.predict_probabilities` of the run's checkpoint
(its test-time augmentation and temperature, when the run has one, baked in as constants) on
uint8 images [batch, S, S, 3] at the run's image size, preprocessing included; out come the
class probabilities float32 [batch, K] (K >= 2). In D (default
`<workdir>/export/<checkpoint>_step<S>`, `step<S>` for a numbered checkpoint):

- `savedmodel/` (jax2tf, lowered for CPU): signature `serving_default`, `images` ->
  `probabilities`, polymorphic batch; `predict_image_bytes`, `image_bytes` tf.string [batch] of
  encoded JPEG/PNG/GIF/BMP files -> `probabilities`, decoded and resized in the graph by
  `data.decode` as the pipeline does. assets/class_names.txt (one per line, label order) and
  assets/model_info.json (what export.json says of the model).
- `model.onnx` (`inception.tools.jaxpr_onnx`, opset 18): `images` -> `probabilities`,
  polymorphic batch; the same facts in its metadata_props.
- `model.tflite` (TFLiteConverter, builtin ops only): `images` uint8 [1, S, S, 3] ->
  `probabilities` [1, K]. A fixed batch of 1: with a symbolic batch the converter meets
  stablehlo dynamic_gather ops it cannot lower, and resizing a batch-1 model's input gives wrong
  numbers (its reshapes are static), so it is not offered.
- `export.json`: the run, checkpoint, step, class names, image size, preprocessing, tta,
  temperature, each artefact's path, bytes and sha256 (a directory's: sha256 of its sorted
  '<relative path> <sha256>' lines, `tree_sha256`), and the checks.

The checks: the run's recorded test split (validation when it has none; export.json says
which), each file sha256-verified, decoded and resized by the pipeline's own functions (their
0..255 values are integers, so cast to uint8 exactly); the JAX model's probabilities on them
(CPU) against each artefact's, run by `export_check.py` in a subprocess: argmax agreement and
max |dp| (target: 1.0 and <= 1e-5 for a float32 model), predict_image_bytes on the files' bytes
likewise, and CPU latency per image at batch 1 and 32 (median of several calls). An unmet
target is recorded with a warning; an artefact that cannot be written or checked is recorded
with its error, and the export then raises ExportError after writing the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data import decode
from data import preprocessing
from data import restructure
from inception import paths
from inception.tools import evaluate
from inception.train import steps as steps_lib
from inception.train import xla_options

FORMAT = 1  # Of export.json.
FORMATS = ('savedmodel', 'onnx', 'tflite')
FILENAMES = {'savedmodel': 'savedmodel', 'onnx': 'model.onnx', 'tflite': 'model.tflite'}
TARGET_AGREEMENT = 1.0
TARGET_MAX_ABS_DP = 1e-5  # float32 models only.
LATENCY_RUNS = {1: 15, 32: 5}  # Timed calls per batch size (after 2 untimed ones).
CHECK_BATCH = 32
CHECKER = Path(__file__).with_name('export_check.py')
TREE_HASH = "sha256 of the sorted lines '<relative path> <sha256 of the file>\\n' of its files"


class ExportError(RuntimeError):
  """An artefact could not be written or checked (export.json records why)."""


@dataclasses.dataclass(frozen=True)
class Model:
  """What is exported: `fn(variables, images uint8 [B, S, S, 3]) -> probabilities [B, K]` and
  the facts every artefact records."""
  fn: Callable[[Any, Any], Any]
  variables: dict
  image_size: int
  resize_method: str
  info: dict  # class_names, image_size, preprocess, resize_method, tta, temperature, run...

  @property
  def class_names(self) -> list[str]:
    return self.info['class_names']


def check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
  """The requested formats in FORMATS order; ValueError naming --format and the valid ones."""
  if isinstance(formats, str):
    formats = formats.split(',')
  given = [f.strip().lower() for f in formats if f.strip()]
  if not given:
    raise ValueError(f'--format is empty; give one or more of {",".join(FORMATS)}')
  unknown = [f for f in given if f not in FORMATS]
  if unknown:
    raise ValueError(f'--format={",".join(formats)}: unknown {", ".join(map(repr, unknown))}; '
                     f'valid formats: {", ".join(FORMATS)}')
  return tuple(f for f in FORMATS if f in given)


def model_of(r: evaluate.Restored) -> Model:
  """The restored run's exported forward pass and facts."""
  tta = evaluate.tta_of(r.config)
  steps_lib.check_tta(tta)
  temperature = None if r.temperature is None else float(r.temperature)
  preprocess = preprocessing.get(r.config.data.preprocess)
  model = r.model

  def fn(variables, images):
    return steps_lib.predict_probabilities(model, variables, preprocess(images), tta=tta,
                                           temperature=temperature)

  step = int(r.meta['step'])
  info = {'class_names': list(r.record.class_names), 'image_size': int(r.config.data.image_size),
          'preprocess': r.config.data.preprocess, 'resize_method': r.config.data.resize_method,
          'tta': tta, 'temperature': temperature, 'calibration': r.calibration,
          'model_dtype': r.config.model.dtype,
          'run': os.fspath(paths.absolute(r.record.workdir)), 'checkpoint': r.checkpoint,
          'step': step, 'trained_on_synthetic_data': r.record.is_synthetic,
          'init_from': r.record.init_from}
  return Model(fn, jax.device_get(r.variables), int(r.config.data.image_size),
               r.config.data.resize_method, info)


def tree_sha256(path: str | os.PathLike) -> str:
  """`TREE_HASH` of a directory (POSIX relative paths)."""
  root = Path(path)
  lines = sorted(f'{p.relative_to(root).as_posix()} {paths.file_digest(p)}\n'
                 for p in root.rglob('*') if p.is_file())
  return hashlib.sha256(''.join(lines).encode()).hexdigest()



def _size(path: Path) -> int:
  return sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) if path.is_dir() \
      else path.stat().st_size


# ---- writers ---------------------------------------------------------------------------------

def write_savedmodel(m: Model, path: str | os.PathLike) -> None:
  """SavedModel with `serving_default` and `predict_image_bytes` (module doc) at `path`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  s = m.image_size
  # Lowered for CPU only: serving machines need no accelerator, and lowering for one needs
  # its plugin here.
  tf_fn = jax2tf.convert(m.fn, polymorphic_shapes=[None, f'(batch, {s}, {s}, 3)'],
                         with_gradient=False, native_serialization_platforms=('cpu',))
  module = tf.Module()
  module.variables_ = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False),
                                            m.variables)

  @tf.function(input_signature=[tf.TensorSpec([None, s, s, 3], tf.uint8, name='images')],
               autograph=False)
  def serve(images):
    return {'probabilities': tf_fn(module.variables_, images)}

  def decode_one(blob):
    # The pipeline's decode and resize; their values are integers in 0..255, so uint8 is exact.
    return tf.cast(decode.resize(decode.decode(blob), s, m.resize_method), tf.uint8)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='image_bytes')],
               autograph=False)
  def serve_bytes(image_bytes):
    images = tf.map_fn(decode_one, image_bytes,
                       fn_output_signature=tf.TensorSpec([s, s, 3], tf.uint8))
    return {'probabilities': tf_fn(module.variables_, images)}

  module.serve, module.serve_bytes = serve, serve_bytes
  module.class_names = tf.Variable(m.class_names, trainable=False)  # Saved (a constant is not).
  with tempfile.TemporaryDirectory() as staging:
    names = Path(staging, 'class_names.txt')
    names.write_text(''.join(f'{c}\n' for c in m.class_names))
    info = Path(staging, 'model_info.json')
    info.write_text(json.dumps(m.info, indent=2, sort_keys=True) + '\n')
    module.class_names_file = tf.saved_model.Asset(str(names))
    module.model_info_file = tf.saved_model.Asset(str(info))
    tf.saved_model.save(module, os.fspath(path), signatures={
        'serving_default': serve.get_concrete_function(),
        'predict_image_bytes': serve_bytes.get_concrete_function()})


def write_onnx(m: Model, path: str | os.PathLike) -> None:
  """ONNX model `images` uint8 [batch, S, S, 3] -> `probabilities` at `path`."""
  try:
    from inception.tools import jaxpr_onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ExportError(f'--format=onnx needs the export extra ({e}): pip install -e '
                      '".[export]"') from None
  s = m.image_size
  (batch,) = jax.export.symbolic_shape('batch')
  proto = jaxpr_onnx.to_onnx(
      m.fn, m.variables, {'images': jax.ShapeDtypeStruct((batch, s, s, 3), jnp.uint8)},
      output_names=['probabilities'], model_name='inception_flax',
      metadata={k: json.dumps(v) for k, v in m.info.items()})
  Path(path).write_bytes(proto.SerializeToString())


def write_tflite(m: Model, path: str | os.PathLike) -> None:
  """TFLite model `images` uint8 [1, S, S, 3] -> `probabilities` [1, K] at `path` (builtin ops
  only, float32)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  s = m.image_size
  tf_fn = jax2tf.convert(m.fn, with_gradient=False, native_serialization_platforms=('cpu',))
  module = tf.Module()
  module.variables_ = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False),
                                            m.variables)

  @tf.function(input_signature=[tf.TensorSpec([1, s, s, 3], tf.uint8, name='images')],
               autograph=False)
  def serve(images):
    return {'probabilities': tf_fn(module.variables_, images)}

  converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()],
                                                              module)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  try:
    blob = converter.convert()
  except Exception as e:  # pylint: disable=broad-except  # The converter's many error types.
    lines = [l for l in str(e).splitlines() if 'error' in l.lower()] or str(e).splitlines()
    raise ExportError('TFLiteConverter cannot convert this model: '
                      + ' | '.join(dict.fromkeys(l.strip() for l in lines[:6]))) from None
  Path(path).write_bytes(blob)


WRITERS = {'savedmodel': write_savedmodel, 'onnx': write_onnx, 'tflite': write_tflite}


# ---- checks ----------------------------------------------------------------------------------

def check_split(r: evaluate.Restored) -> tuple[str, list[str], np.ndarray]:
  """(split name, verified files, labels int [N]) of the run's test split, else validation."""
  manifest = r.record.manifest()
  split = 'test' if manifest['splits'].get('test') else 'validation'
  if not manifest['splits'].get(split):
    raise ValueError(f'the run in {r.record.workdir} records no test or validation examples '
                     'to check the export on')
  files, labels = restructure.verified_split(r.record.data['root'], manifest, split)
  return split, files, np.asarray(labels, np.int64)


def pipeline_images(files: Sequence[str], image_size: int, resize_method: str) -> np.ndarray:
  """uint8 [N, S, S, 3]: the files as the pipeline decodes and resizes them (exactly: its
  values are integers in 0..255; ValueError if not)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_tensor_slices(list(files)).map(
      lambda p: decode.decode_resize(p, image_size, resize_method),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(64)
  images = np.concatenate([b for b in ds.as_numpy_iterator()]) if len(files) else \
      np.zeros([0, image_size, image_size, 3], np.float32)
  if not (np.all(images == np.round(images)) and images.min() >= 0 and images.max() <= 255):
    raise ValueError('the pipeline\'s resized images are not integers in 0..255 (resize_method '
                     f'{resize_method!r}); a uint8 export cannot reproduce them')
  return images.astype(np.uint8)


def _latency(call, images: np.ndarray, runs: dict[int, int], warmup: int = 2) -> dict:
  out = {}
  for batch, n in runs.items():
    x = np.resize(images, (batch,) + images.shape[1:])
    for _ in range(warmup):
      call(x)
    times = []
    for _ in range(n):
      t = time.perf_counter()
      call(x)
      times.append(time.perf_counter() - t)
    out[str(batch)] = {'median_s_per_image': statistics.median(times) / batch, 'runs': n,
                       'sequential': False}
  return out


def jax_reference(m: Model, images: np.ndarray, runs: dict[int, int]
                  ) -> tuple[np.ndarray, dict]:
  """(probabilities float32 [N, K] of the JAX model on CPU, its latency), batches of 32 (the
  last padded, so one compilation serves all)."""
  cpu = jax.devices('cpu')[0]
  variables = jax.device_put(m.variables, cpu)
  # The project's XLA:CPU options, as eval, predict and the API compile with.
  fn = jax.jit(m.fn, compiler_options=xla_options.compiler_options())

  def call(x):
    return np.asarray(fn(variables, jax.device_put(x, cpu)))

  out = []
  for i in range(0, len(images), CHECK_BATCH):
    x = images[i:i + CHECK_BATCH]
    pad = np.zeros((CHECK_BATCH - len(x),) + x.shape[1:], x.dtype)
    out.append(call(np.concatenate([x, pad]))[:len(x)])
  return np.concatenate(out), _latency(call, images, runs)


def compare(probs: np.ndarray, ref: np.ndarray, labels: np.ndarray, float32: bool) -> dict:
  """Agreement of argmaxes, max |dp|, accuracy, and whether the targets are met."""
  if probs.shape != ref.shape:
    return {'error': f'probabilities have shape {list(probs.shape)}, JAX\'s {list(ref.shape)}',
            'meets_target': False}
  agreement = float(np.mean(probs.argmax(-1) == ref.argmax(-1)))
  max_dp = float(np.max(np.abs(probs.astype(np.float64) - ref))) if probs.size else 0.0
  out = {'agreement': agreement, 'max_abs_dp': max_dp,
         'disagreements': int(np.sum(probs.argmax(-1) != ref.argmax(-1))),
         'accuracy': float(np.mean(probs.argmax(-1) == labels)), 'count': int(len(probs))}
  out['meets_target'] = bool(agreement >= TARGET_AGREEMENT and
                             (not float32 or max_dp <= TARGET_MAX_ABS_DP))
  return out


def run_checker(fmt: str, artefact: Path, images_npz: Path, files: Sequence[str] | None,
                workdir: Path, runs: dict[int, int]) -> tuple[dict, dict]:
  """(outputs, report) of `export_check.py` on `artefact`, in a subprocess run by path with
  the cwd outside the repository and no PYTHONPATH, so nothing of the project is importable
  by accident."""
  req = {'format': fmt, 'path': str(artefact), 'images': str(images_npz),
         'files': list(files) if files else None, 'batch_size': CHECK_BATCH,
         'latency': {str(b): n for b, n in runs.items()}, 'warmup': 2, 'threads': None,
         'output': str(workdir / f'{fmt}_out.npz'), 'report': str(workdir / f'{fmt}_report.json')}
  request = workdir / f'{fmt}_request.json'
  request.write_text(json.dumps(req))
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONSTARTUP')}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  proc = subprocess.run([sys.executable, '-P', str(CHECKER), str(request)], cwd=workdir,
                        env=env, capture_output=True, text=True)
  if proc.returncode:
    tail = '\n'.join(proc.stderr.strip().splitlines()[-8:])
    raise ExportError(f'{CHECKER.name} failed on {artefact} (exit {proc.returncode}):\n{tail}')
  with np.load(req['output']) as out:
    outputs = {k: out[k] for k in out.files}
  return outputs, json.loads(Path(req['report']).read_text())


# ---- export ----------------------------------------------------------------------------------

def default_export_dir(workdir, checkpoint: str, step: int):
  label = f'{checkpoint}_step{step}' if checkpoint in ('latest', 'best') else f'step{step}'
  return paths.as_path(workdir) / 'export' / label


def _check_dir(export_dir: Path) -> Path:
  """`export_dir` if it is new, empty or an earlier export (replaced once the new one is
  complete); ValueError for a file or a folder holding anything else."""
  if export_dir.exists():
    if not export_dir.is_dir():
      raise ValueError(f'--export_dir {export_dir} is a file; give a folder')
    if any(export_dir.iterdir()) and not (export_dir / 'export.json').is_file():
      raise ValueError(f'--export_dir {export_dir} is not empty and holds no export.json (not '
                       'an earlier export): give a new or empty folder')
  return export_dir


def _staging(export_dir: Path) -> Path:
  """A fresh folder beside `export_dir` to write the export into."""
  export_dir.parent.mkdir(parents=True, exist_ok=True)
  # Not tempfile.mkdtemp: its 0700 mode would stay on the export.
  tag = f'{os.getpid()}-{uuid.uuid4().hex[:8]}'
  staging = export_dir.with_name(f'.{export_dir.name}.partial-{tag}')
  staging.mkdir()
  return staging


def _install(staging: Path, export_dir: Path, log) -> None:
  old = None
  if export_dir.exists():
    old = export_dir.with_name(f'.{export_dir.name}.old-{os.getpid()}')
    export_dir.rename(old)
    log(f'Replacing the earlier export in {export_dir}.')
  staging.rename(export_dir)
  if old is not None:
    shutil.rmtree(old)


def export(workdir: str | os.PathLike, *, checkpoint: str = 'latest',
           formats: Sequence[str] | str = ('savedmodel', 'onnx'),
           export_dir: str | os.PathLike | None = None,
           config: ml_collections.ConfigDict | None = None,
           latency_runs: dict[int, int] | None = None,
           log: Callable[[str], None] = print) -> dict:
  """Writes and checks `formats` of the run's `checkpoint` into `export_dir`; returns the
  dict written to export.json.

  config: optional --config (eval keys only, as `evaluate.restore`; eval.tta is exported).
  latency_runs: {batch size: timed calls}, default LATENCY_RUNS.
  Raises ValueError (a bad --format or --export_dir), the errors of `evaluate.restore` and
  `restructure.verified_split` (naming the file), ExportError (an artefact failed; the others
  and export.json are written first).
  """
  formats = check_formats(formats)
  runs = dict(LATENCY_RUNS if latency_runs is None else latency_runs)
  if export_dir is not None:  # Before the restore: a bad folder fails at once.
    paths.require_local(export_dir, '--export_dir', 'each artefact is checked from local files')
    export_dir = _check_dir(Path(os.fspath(export_dir)).absolute())
  r = evaluate.restore(workdir, checkpoint, config=config, log=log)
  step = int(r.meta['step'])
  if export_dir is None:
    export_dir = default_export_dir(workdir, checkpoint, step)
    paths.require_local(export_dir, 'The default export folder',
                        'each artefact is checked from local files; pass --export_dir')
    export_dir = _check_dir(Path(os.fspath(export_dir)).absolute())
  m = model_of(r)
  float32 = m.info['model_dtype'] == 'float32'
  split, files, labels = check_split(r)
  log(f'Checking on the run\'s {split} split: {len(files)} files (sha256-verified).')
  images = pipeline_images(files, m.image_size, m.resize_method)
  ref, ref_latency = jax_reference(m, images, runs)
  staging = _staging(export_dir)
  out = {'format': FORMAT, 'workdir': m.info['run'], 'checkpoint': checkpoint, 'step': step,
         'epoch': r.meta.get('epoch'), **{k: v for k, v in m.info.items() if k != 'run'},
         'inputs': {'images': f'uint8 [batch, {m.image_size}, {m.image_size}, 3], 0..255 RGB, '
                              f'resized as the pipeline does ({m.resize_method})',
                    'image_bytes': 'string [batch]: encoded JPEG/PNG/GIF/BMP files '
                                   '(savedmodel predict_image_bytes)'},
         'outputs': {'probabilities': f'float32 [batch, {len(m.class_names)}], class order '
                                      'of class_names'},
         'tree_hash': TREE_HASH,
         'check': {'split': split, 'num_images': len(files), 'data_root': r.record.data['root'],
                   'manifest_sha256': r.record.data['manifest_sha256'],
                   'targets': {'agreement': TARGET_AGREEMENT,
                               'max_abs_dp': TARGET_MAX_ABS_DP if float32 else None},
                   'reference': 'JAX on CPU (jit of steps.predict_probabilities) on the '
                                'pipeline-resized images',
                   'jax': {'accuracy': float(np.mean(ref.argmax(-1) == labels)),
                           'latency': ref_latency, 'version': jax.__version__}},
         'artefacts': {}}
  if split != 'test':
    out['check']['note'] = 'the run records no test split; checked on its validation split'
  errors = []
  try:
    with tempfile.TemporaryDirectory(prefix='export-check-') as tmp:
      tmp = Path(tmp)
      images_npz = tmp / 'images.npz'
      np.savez(images_npz, images=images)
      for fmt in formats:
        path = staging / FILENAMES[fmt]
        entry = {'path': FILENAMES[fmt]}
        out['artefacts'][fmt] = entry
        try:
          t = time.perf_counter()
          WRITERS[fmt](m, path)
          entry['convert_s'] = round(time.perf_counter() - t, 2)
          entry['bytes'] = _size(path)
          entry['sha256'] = tree_sha256(path) if path.is_dir() else paths.file_digest(path)
          if path.is_dir():
            entry['sha256_of'] = 'tree_hash'
          log(f'Wrote {fmt} ({entry["bytes"] / 2**20:.1f} MiB) in {entry["convert_s"]} s; '
              'checking it in a subprocess.')
          outputs, report = run_checker(fmt, path, images_npz,
                                        files if fmt == 'savedmodel' else None, tmp, runs)
        except (ExportError, NotImplementedError) as e:
          entry['error'] = str(e)
          errors.append(f'--format={fmt}: {e}')
          log(f'ERROR: {fmt}: {e}')
          continue
        checks = {'images': compare(outputs['probabilities'], ref, labels, float32)}
        if 'probabilities_bytes' in outputs:
          checks['image_bytes'] = compare(outputs['probabilities_bytes'], ref, labels, float32)
        entry.update(checks=checks, latency=report.pop('latency'), runtime=report)
        _verify_report(fmt, report, m, errors)
        for what, c in checks.items():
          if 'error' in c:  # Not a near miss: the artefact computes something else.
            errors.append(f'--format={fmt} ({what}): {c["error"]}')
          elif not c['meets_target']:
            log(f'WARNING: {fmt} ({what}) misses the target (agreement {c["agreement"]}, '
                f'max |dp| {c["max_abs_dp"]:.2e}); see export.json and docs/export.md')
        log(f'{fmt}: ' + '; '.join(
            f'{what}: agreement {c.get("agreement")} max |dp| {c.get("max_abs_dp")}'
            for what, c in checks.items()) + '; ms/image ' + ', '.join(
                f'batch {b}: {v["median_s_per_image"] * 1e3:.2f}'
                for b, v in entry['latency'].items()))
    out['errors'] = errors
    (staging / 'export.json').write_text(json.dumps(out, indent=2, default=str) + '\n')
    _install(staging, export_dir, log)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  log(f'Wrote {export_dir}/export.json ({", ".join(formats)}; step {step}, {checkpoint}).')
  if r.record.is_synthetic:
    log(r.record.data['banner'])
  if errors:
    raise ExportError(f'{len(errors)} artefact(s) failed (recorded in {export_dir}/export.json;'
                      ' the others are written): ' + ' || '.join(errors))
  return out


def _verify_report(fmt: str, report: dict, m: Model, errors: list[str]) -> None:
  """Appends to `errors` where the artefact's own description contradicts the run."""
  if fmt == 'savedmodel' and report.get('class_names') != m.class_names:
    errors.append(f'--format=savedmodel: assets/class_names.txt holds {report.get("class_names")}'
                  f', the run {m.class_names}')
