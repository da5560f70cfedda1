"""Prediction end to end: a folder of JPEGs -> a CSV of class probabilities, side by side.

    .venv/bin/python bench/predict_e2e.py --workdir W [--export_dir D] [--images DIR]
        [--batch_size 32] [--repeats 3] [--limit N] [--checkpoint latest] [--out figures.json]
        [--skip keras,onnx,...] [--profile] [--csv_dir DIR]
    .venv/bin/python bench/predict_e2e.py --workdir W --export_dir D --repeats 1 --limit 64  # smoke

One unit of work = every file read, decoded, resized, classified and the CSV written
(path, class, probability, p_<class>...; one writer for all). Contenders, on the same files
(staged as one flat folder of symbolic links, so Keras' directory reader sees exactly them)
and the same CPU, timed alternately A B C ... after a warm-up round (compilation, tracing),
medians over `--repeats` rounds:

  keras             tf_keras `image_dataset_from_directory(labels=None, interpolation=<the run's
                    resize method>, batch_size=B, shuffle=False)` + `model.predict`; the model
                    is the run's classifier rebuilt in Keras 2 (`classifier` of
                    tests/reference/keras_models.py: the run's preprocessing as a Rescaling
                    layer, `applications.InceptionV3` cut at the run's layer, the run's head)
                    with the run's TRAINED weights copied in (`load_flax_variables` for the
                    backbone; Dense kernels as is).
  savedmodel_bytes  our SavedModel in TF: `tf.saved_model.load(...)`, signature
                    `predict_image_bytes` (encoded files -> probabilities) fed by tf.data
                    (read_file, batch, prefetch).
  savedmodel_uint8  the same SavedModel's `serving_default` (uint8 [B, S, S, 3]) fed by a
                    tf.data decode + resize (`data.decode`, the run's method) pipeline.
  onnx              our ONNX file in onnxruntime (uint8 [B, S, S, 3]) fed by the same tf.data
                    decode + resize pipeline.
  api               `inception.load(W, checkpoint).predict(paths)` (its tf.data pipeline decodes
                    and resizes in the background), then the CSV.
  forward           the API's jitted predict step alone on the same batches already decoded,
                    resized, preprocessed and on the device (no files, no CSV): the ceiling
                    of `api`.
  --profile adds    pipeline: the API's input side alone (`data.usable_images` + its tf.data
                    batches iterated, no model); keras_forward: Keras `predict` on the images
                    decoded beforehand (one uint8 array): where each side's time goes.

The exported artefacts (`python train.py --workdir W --mode=export --format=savedmodel,onnx
--export_dir D`) are found from D/export.json; without --export_dir (or export.json) those
contenders are skipped and the script says so.

Prints, per contender, the median rate (images/s) and its range; per round, the ratios
api/forward (target >= 0.90: the input pipeline overlapped with the forward) and each
contender vs keras (target for api >= 1.0x), as min..median..max over the rounds, and the same
ratio of each side's fastest round (the least disturbed on a shared machine). Then the
agreement of every contender's predicted class with the api's (and the largest probability
difference), file by file, from the CSVs of the last round. The environment report (CPU model
and AVX-512 flags from lscpu, load average before and after) comes first and last.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import common  # bench/common.py; also puts the repo root on sys.path.

common.quiet_tensorflow()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from tests.reference import keras_models  # pylint: disable=g-import-not-at-top,g-bad-import-order

CONTENDERS = ('keras', 'savedmodel_bytes', 'savedmodel_uint8', 'onnx', 'api', 'forward')
PROFILE = ('pipeline', 'keras_forward')  # --profile: where the time goes.
TARGET_OVERLAP = 0.90  # api rate / forward-only rate.
TARGET_VS_KERAS = 1.0  # api rate / keras rate.


# ----------------------------------------------------------------------------- environment


def uptime() -> str:
  try:
    return subprocess.run(['uptime'], capture_output=True, text=True, check=False).stdout.strip()
  except OSError:
    return f'load average {os.getloadavg()}'


# ----------------------------------------------------------------------------- files and CSV


def default_images(workdir: str) -> list[str]:
  """The run's test split files (its manifest, under the data root it recorded)."""
  from inception.train import run_record  # pylint: disable=g-import-not-at-top
  record = run_record.load(workdir)
  root = pathlib.Path(record.data['root'])
  return [str(root / e['path']) for e in record.manifest()['splits']['test']]


def choose(files: Sequence[str], limit: int) -> list[str]:
  """`limit` files spread evenly over `files` (both classes of a sorted split), in order."""
  if not limit or limit >= len(files):
    return list(files)
  idx = np.unique(np.linspace(0, len(files) - 1, limit).round().astype(int))
  return [files[i] for i in idx]


def stage(files: Sequence[str], folder: pathlib.Path) -> list[str]:
  """One flat folder of symbolic links `<i:05d>_<name>` to `files`: sorted = the given order,
  so a directory reader (Keras') sees exactly these files in this order."""
  folder.mkdir(parents=True, exist_ok=True)
  out = []
  for i, f in enumerate(files):
    link = folder / f'{i:05d}_{pathlib.Path(f).name}'
    os.symlink(os.path.abspath(f), link)
    out.append(str(link))
  return out


def write_csv(path: str, files: Sequence[str], probs: np.ndarray,
              class_names: Sequence[str]) -> None:
  """path, class, probability, p_<class>... as `--mode=predict` writes them."""
  probs = np.asarray(probs, np.float64)
  if probs.shape != (len(files), len(class_names)):
    raise ValueError(f'{path}: probabilities {probs.shape} for {len(files)} files and '
                     f'{len(class_names)} classes')
  with open(path, 'w', newline='') as fh:
    w = csv.writer(fh)
    w.writerow(['path', 'class', 'probability'] + [f'p_{n}' for n in class_names])
    for f, p in zip(files, probs):
      k = int(np.argmax(p))
      w.writerow([f, class_names[k], f'{p[k]:.6f}'] + [f'{x:.6f}' for x in p])


def read_csv(path: str) -> tuple[list[str], np.ndarray]:
  with open(path, newline='') as fh:
    rows = list(csv.reader(fh))
  header, body = rows[0], rows[1:]
  cols = [i for i, h in enumerate(header) if h.startswith('p_')]
  return [r[0] for r in body], np.array([[float(r[i]) for i in cols] for r in body])


# ----------------------------------------------------------------------------- the Keras side


def keras_contender(model, folder: str, size: int, resize_method: str, batch_size: int,
                    class_names: Sequence[str], csv_path: str) -> Callable[[], None]:
  import tf_keras  # pylint: disable=g-import-not-at-top

  def run():
    with contextlib.redirect_stdout(io.StringIO()):  # Its 'Found N files.' line.
      ds = tf_keras.utils.image_dataset_from_directory(
          folder, labels=None, batch_size=batch_size, image_size=(size, size),
          interpolation=resize_method, shuffle=False)
    files = list(ds.file_paths)
    p = model.predict(ds, verbose=0)
    probs = np.concatenate([1.0 - p, p], axis=1) if p.shape[1] == 1 else p
    write_csv(csv_path, files, probs, class_names)
  return run


# ----------------------------------------------------------------------------- exported artefacts


def find_artefacts(export_dir: str | None) -> dict[str, Any]:
  """{'savedmodel': path, 'onnx': path, 'about': export.json} from D/export.json ({} without)."""
  if not export_dir:
    return {}
  about_path = pathlib.Path(export_dir) / 'export.json'
  if not about_path.is_file():
    print(f'# {about_path} not found: SavedModel and ONNX contenders skipped', flush=True)
    return {}
  about = json.loads(about_path.read_text())
  out = {'about': about}
  for fmt, entry in (about.get('artefacts') or {}).items():
    if fmt not in ('savedmodel', 'onnx'):
      continue
    if entry.get('error') or not entry.get('path'):
      print(f'# export.json: {fmt} has no usable artefact ({entry.get("error")}): skipped')
      continue
    path = pathlib.Path(entry['path'])
    out[fmt] = str(path if path.is_absolute() else pathlib.Path(export_dir) / path)
  for fmt in ('savedmodel', 'onnx'):
    if fmt not in out:
      print(f'# export.json lists no {fmt}: its contender(s) skipped', flush=True)
  return out


def tf_uint8_batches(files: Sequence[str], size: int, resize_method: str, batch_size: int):
  """tf.data: read, decode and resize (the pipeline's `data.decode`) -> uint8 [B, S, S, 3]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data import decode  # pylint: disable=g-import-not-at-top

  def load(path):
    img = tf.cast(decode.decode_resize(path, size, resize_method), tf.uint8)
    img.set_shape([size, size, 3])
    return img

  ds = tf.data.Dataset.from_tensor_slices(list(files))
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def savedmodel_contenders(path: str, files: Sequence[str], size: int, resize_method: str,
                          batch_size: int, class_names: Sequence[str], csv_dir: str
                          ) -> dict[str, Callable[[], None]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(path)
  sigs = loaded.signatures
  print(f'# SavedModel {path}: signatures {sorted(sigs)}', flush=True)
  for name, fn in sigs.items():
    print(f'#   {name}: {fn.structured_input_signature} -> {fn.structured_outputs}', flush=True)
  out = {}

  def one_output(result):
    if isinstance(result, dict):
      if len(result) == 1:
        return next(iter(result.values())).numpy()
      for k in ('probabilities', 'probs', 'output_0'):
        if k in result:
          return result[k].numpy()
      raise ValueError(f'cannot tell the probabilities among outputs {sorted(result)}')
    return result.numpy()

  def call(fn, x):
    kwargs = fn.structured_input_signature[1]
    if len(kwargs) != 1:
      raise ValueError(f'signature takes {sorted(kwargs)}; expected one input')
    return one_output(fn(**{next(iter(kwargs)): x}))

  if 'predict_image_bytes' in sigs:
    fn = sigs['predict_image_bytes']

    def run_bytes():
      ds = tf.data.Dataset.from_tensor_slices(list(files)).map(
          tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
      probs = np.concatenate([call(fn, b) for b in ds])
      write_csv(os.path.join(csv_dir, 'savedmodel_bytes.csv'), files, probs, class_names)
    out['savedmodel_bytes'] = run_bytes
  else:
    print('# SavedModel has no predict_image_bytes signature: savedmodel_bytes skipped')
  if 'serving_default' in sigs:
    fn_u8 = sigs['serving_default']

    def run_uint8():
      ds = tf_uint8_batches(files, size, resize_method, batch_size)
      probs = np.concatenate([call(fn_u8, b) for b in ds])
      write_csv(os.path.join(csv_dir, 'savedmodel_uint8.csv'), files, probs, class_names)
    out['savedmodel_uint8'] = run_uint8
  else:
    print('# SavedModel has no serving_default signature: savedmodel_uint8 skipped')
  out['_keepalive'] = loaded  # The signatures' variables live as long as `loaded`.
  return out


def onnx_contender(path: str, files: Sequence[str], size: int, resize_method: str,
                   batch_size: int, class_names: Sequence[str], csv_path: str
                   ) -> Callable[[], None]:
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
  (inp,) = sess.get_inputs()
  outs = sess.get_outputs()
  print(f'# ONNX {path}: input {inp.name} {inp.shape} {inp.type}; outputs '
        f'{[(o.name, o.shape) for o in outs]}', flush=True)
  fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
  dtype = np.uint8 if 'uint8' in inp.type else np.float32
  if dtype is not np.uint8:
    raise ValueError(f'{path}: input type {inp.type}; expected uint8 images')
  out_name = outs[0].name

  if fixed and fixed != batch_size:
    print(f'# ONNX input has a fixed batch of {fixed}: each batch of {batch_size} runs as '
          f'{-(-batch_size // fixed)} calls', flush=True)

  def run():
    chunks = []
    for b in tf_uint8_batches(files, size, resize_method, batch_size):
      x = b.numpy()
      step = fixed or len(x)
      for i in range(0, len(x), step):
        part = x[i:i + step]
        n = len(part)
        if n != step:  # A fixed batch dimension: pad the last part.
          part = np.concatenate([part, np.zeros((step - n,) + x.shape[1:], x.dtype)])
        chunks.append(sess.run([out_name], {inp.name: part})[0][:n])
    write_csv(csv_path, files, np.concatenate(chunks), class_names)
  return run


# ----------------------------------------------------------------------------- ours


def load_api(workdir: str, checkpoint: str, batch_size: int):
  import inception  # pylint: disable=g-import-not-at-top
  from inception.train import run_record  # pylint: disable=g-import-not-at-top
  config = run_record.load(workdir).config
  config.eval.batch_size = batch_size
  messages = []
  clf = inception.load(workdir, checkpoint, config=config, log=messages.append)
  for m in messages:
    print(f'# api: {m}', flush=True)
  return clf


def api_contender(clf, files: Sequence[str], csv_path: str) -> Callable[[], None]:
  def run():
    write_csv(csv_path, files, clf.predict(list(files)), clf.class_names)
  return run


def forward_contender(clf, files: Sequence[str]) -> tuple[Callable[[], None], int]:
  """The API's jitted predict step on its own batches of `files`, decoded, resized,
  preprocessed and on the device beforehand; returns (run, number of batches)."""
  from inception.train import sharding  # pylint: disable=g-import-not-at-top
  mesh, variables = clf.restored.mesh, clf.restored.variables
  step = clf._predict  # pylint: disable=protected-access  # The API's own compiled step.
  batches = [sharding.shard_batch({'image': b['image']}, mesh)['image']
             for b in clf._runner.file_batches(list(files))]  # pylint: disable=protected-access

  def run():
    for x in batches:
      np.asarray(step(variables, x))  # Results to the host, as the API does.
  return run, len(batches)


def pipeline_contender(clf, files: Sequence[str]) -> Callable[[], None]:
  """The API's input side alone: the file check (`data.usable_images`) and its tf.data
  batches (read, decode, resize, preprocess) iterated to the end, no forward."""
  import data  # pylint: disable=g-import-not-at-top

  def run():
    usable = data.usable_images(list(files), log=lambda m: None)
    for _ in clf._runner.file_batches([d for _, d in usable]):  # pylint: disable=protected-access
      pass
  return run


def keras_forward_contender(model, files: Sequence[str], size: int, resize_method: str,
                            batch_size: int) -> Callable[[], None]:
  """`model.predict` alone on the same images decoded and resized beforehand (one uint8
  array in memory, as Keras' directory reader yields them), batch `batch_size`: Keras'
  forward-only rate through the same predict loop."""
  images = np.concatenate([b.numpy() for b in tf_uint8_batches(files, size, resize_method,
                                                                batch_size)])

  def run():
    model.predict(images, batch_size=batch_size, verbose=0)
  return run


# ----------------------------------------------------------------------------- report


def agreement(csv_dir: str, names: Sequence[str], reference: str, originals: Sequence[str]
              ) -> dict[str, dict]:
  """Per contender vs `reference`: files compared, same predicted class, largest |dp|."""
  ref_files, ref = read_csv(os.path.join(csv_dir, f'{reference}.csv'))
  if len(ref_files) != len(originals):
    raise ValueError(f'{reference}.csv has {len(ref_files)} rows for {len(originals)} files')
  out = {}
  for name in names:
    if name in (reference, 'forward') + PROFILE:
      continue
    files, probs = read_csv(os.path.join(csv_dir, f'{name}.csv'))
    if [os.path.basename(f) for f in files] != [os.path.basename(f) for f in ref_files]:
      raise ValueError(f'{name}.csv lists other files (or another order) than {reference}.csv')
    same = probs.argmax(1) == ref.argmax(1)
    worst = np.abs(probs - ref).max(1)
    out[name] = {'files': len(files), 'same_class': int(same.sum()),
                 'fraction': float(same.mean()), 'max_abs_prob_diff': float(worst.max()),
                 'median_abs_prob_diff': float(np.median(worst)),
                 'differing': [originals[i] for i in np.flatnonzero(~same)][:20]}
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, help='a trained run')
  p.add_argument('--export_dir', default=None,
                 help='its export (train.py --mode=export): D/export.json lists the artefacts')
  p.add_argument('--images', default=None,
                 help="folder of images (recursive); default: the run's test split")
  p.add_argument('--limit', type=int, default=0, help='use N files spread over the list (0: all)')
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--checkpoint', default='latest',
                 help="latest | best | STEP (the export's step when export.json records one)")
  p.add_argument('--skip', default='', help=f'comma-separated, of {",".join(CONTENDERS)}')
  p.add_argument('--profile', action='store_true',
                 help='also time the API\'s input side alone (pipeline: file check + tf.data '
                 'batches, no forward) and the Keras model alone on decoded batches '
                 '(keras_forward)')
  p.add_argument('--csv_dir', default=None, help='keep the CSVs here (default: a temp folder)')
  p.add_argument('--out', default=None, help='JSON of the figures')
  args = p.parse_args(argv)
  skip = {s for s in args.skip.split(',') if s}
  unknown = skip - set(CONTENDERS + PROFILE)
  if unknown:
    p.error(f'--skip: unknown {sorted(unknown)}; valid: {",".join(CONTENDERS + PROFILE)}')
  if args.repeats < 1 or args.batch_size < 1:
    p.error('--repeats and --batch_size must be >= 1')

  cpu = common.cpu_facts()
  up_start = uptime()
  print(common.environment())
  print(f'# AVX2 {cpu["avx2"]}; AVX-512: {" ".join(cpu["avx512"]) or "none"}')
  print(f'# uptime at start: {up_start}', flush=True)

  import jax  # pylint: disable=g-import-not-at-top
  from data import list_images  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  originals = ([str(f) for f in list_images(args.images)] if args.images
               else default_images(args.workdir))
  originals = choose(originals, args.limit)
  if not originals:
    p.error('no image files')
  artefacts = find_artefacts(args.export_dir)
  checkpoint = args.checkpoint
  step = (artefacts.get('about') or {}).get('step')
  if step is not None and checkpoint in ('latest', 'best'):
    checkpoint = str(step)
    print(f'# export.json records step {step}: the api, forward and keras use checkpoint {step}')

  tmp = pathlib.Path(tempfile.mkdtemp(prefix='predict_e2e_'))
  csv_dir = args.csv_dir or str(tmp / 'csv')
  os.makedirs(csv_dir, exist_ok=True)
  try:
    files = stage(originals, tmp / 'images')
    folder = str(tmp / 'images')
    clf = load_api(args.workdir, checkpoint, args.batch_size)
    cfg = clf.restored.config
    size, method, names = clf.image_size, cfg.data.resize_method, clf.class_names
    print(f'# run {args.workdir}: checkpoint {clf.checkpoint} step {clf.step}; {size} px, '
          f'preprocess {cfg.data.preprocess}, resize {method}, head {cfg.model.head}, cut '
          f'{cfg.model.cut}, tta {clf.tta}, temperature {clf.temperature}; classes {names}; '
          f'jax devices {jax.devices()}')
    print(f'# {len(files)} files ({"--images " + args.images if args.images else "the test split"}'
          f'{f", --limit {args.limit}" if args.limit else ""}), batch {args.batch_size}, '
          f'{args.repeats} rounds after 1 warm-up round', flush=True)

    contenders: dict[str, Callable[[], None]] = {}
    notes = []
    if 'keras' not in skip:
      if clf.tta != 'none':
        notes.append(f'keras has no test-time augmentation (the run uses tta={clf.tta})')
      kmodel = keras_models.classifier(cfg, jax.device_get(clf.restored.variables), len(names),
                                       clf.temperature)
      contenders['keras'] = keras_contender(kmodel, folder, size, method, args.batch_size, names,
                                            os.path.join(csv_dir, 'keras.csv'))
      notes.append('keras: the run\'s trained weights copied in (backbone and head)')
    if artefacts.get('savedmodel') and not {'savedmodel_bytes', 'savedmodel_uint8'} <= skip:
      sm = savedmodel_contenders(artefacts['savedmodel'], files, size, method, args.batch_size,
                                 names, csv_dir)
      keep_alive = sm.pop('_keepalive')  # noqa: F841  # Holds the signatures' variables.
      contenders.update({k: v for k, v in sm.items() if k not in skip})
    elif not args.export_dir:
      notes.append('no --export_dir: savedmodel and onnx contenders not run')
    if artefacts.get('onnx') and 'onnx' not in skip:
      contenders['onnx'] = onnx_contender(artefacts['onnx'], files, size, method,
                                          args.batch_size, names,
                                          os.path.join(csv_dir, 'onnx.csv'))
    if 'api' not in skip:
      contenders['api'] = api_contender(clf, files, os.path.join(csv_dir, 'api.csv'))
    if 'forward' not in skip:
      contenders['forward'], num_batches = forward_contender(clf, files)
      notes.append(f'forward: {num_batches} batches of {args.batch_size} (the last padded), '
                   'already decoded/resized/preprocessed on the device')
    if args.profile and 'pipeline' not in skip:
      contenders['pipeline'] = pipeline_contender(clf, files)
    if args.profile and 'keras' in contenders and 'keras_forward' not in skip:
      contenders['keras_forward'] = keras_forward_contender(kmodel, files, size, method,
                                                            args.batch_size)
    for n in notes:
      print(f'# {n}')
    print(f'# set-up (load, stage, Keras build, artefacts): {time.perf_counter() - t0:.1f} s',
          flush=True)

    t1 = time.perf_counter()
    times = common.alternate(contenders, args.repeats, warmup=1)
    timing_s = time.perf_counter() - t1
    n = len(files)
    print(f'\nfolder of {n} images -> CSV, batch {args.batch_size}: images/s (median of '
          f'{args.repeats}, range), {timing_s:.0f} s of timing', flush=True)
    base = 'keras' if 'keras' in times else next(iter(times))
    rates = common.report_rates(times, n, baseline=base)
    ratios: dict[str, list[float]] = {}
    if 'api' in times and 'forward' in times:
      ratios['api / forward (end-to-end / forward-only)'] = [
          f / a for f, a in zip(times['forward'], times['api'])]
    if 'keras' in times:
      for name in times:
        if name not in ('keras', 'forward') + PROFILE:
          ratios[f'{name} / keras'] = [k / t for k, t in zip(times['keras'], times[name])]
    if 'forward' in times and 'keras_forward' in times:
      ratios['forward / keras_forward (forward-only rates)'] = [
          k / f for f, k in zip(times['forward'], times['keras_forward'])]
    if 'keras' in times and 'keras_forward' in times:
      ratios['keras / keras_forward (Keras end-to-end / forward-only)'] = [
          f / k for k, f in zip(times['keras'], times['keras_forward'])]
    if 'pipeline' in times and 'forward' in times:
      ratios['pipeline time / forward time'] = [
          p_ / f for p_, f in zip(times['pipeline'], times['forward'])]
    print('\nratios of rates, per round (min..median..max); best: of each one\'s fastest round '
          '(the least disturbed on a shared machine):')
    best = {}
    for name, rs in ratios.items():
      a, b = name.split(' (')[0].split(' / ')
      if a in times and b in times:  # A ratio of rates = the inverse ratio of times.
        best[name] = min(times[b]) / min(times[a])
      elif name == 'pipeline time / forward time':
        best[name] = min(times['pipeline']) / min(times['forward'])
      print(f'  {name:<44s} {common.spread(rs, 3)}'
            + (f'; best {best[name]:.3f}' if name in best else ''))
    verdicts = []
    if 'api / forward (end-to-end / forward-only)' in ratios:
      r = statistics.median(ratios['api / forward (end-to-end / forward-only)'])
      verdicts.append(f'api / forward {r:.3f}: target >= {TARGET_OVERLAP} '
                      f'{"MET" if r >= TARGET_OVERLAP else "MISSED"}')
    if 'api / keras' in ratios:
      r = statistics.median(ratios['api / keras'])
      verdicts.append(f'api / keras {r:.3f}x: target >= {TARGET_VS_KERAS}x '
                      f'{"MET" if r >= TARGET_VS_KERAS else "MISSED"}')
    for v in verdicts:
      print(f'  {v}')

    agree = {}
    if 'api' in times:
      agree = agreement(csv_dir, list(times), 'api', originals)
      print('\nagreement with api (predicted class, file by file; last round\'s CSVs):')
      for name, a in agree.items():
        print(f'  {name:<18s} {a["same_class"]}/{a["files"]} = {a["fraction"]:.4f}; |dp| max '
              f'{a["max_abs_prob_diff"]:.2e}, median {a["median_abs_prob_diff"]:.2e}'
              + (f'; differ: {a["differing"][:5]}' if a['differing'] else ''))
    up_end = uptime()
    print(f'\n# uptime at the end: {up_end}', flush=True)
    if args.out:
      figures = {
          'command': ' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
          'environment': common.environment_facts(), **cpu,
          'uptime_start': up_start, 'uptime_end': up_end, 'files': n,
          'batch_size': args.batch_size, 'repeats': args.repeats,
          'checkpoint': clf.checkpoint, 'step': clf.step, 'image_size': size,
          'artefacts': {k: v for k, v in artefacts.items() if k != 'about'},
          'seconds': times, 'images_per_s': rates, 'ratios': ratios,
          'ratio_spread': {k: [min(v), statistics.median(v), max(v)] for k, v in ratios.items()},
          'ratio_of_best_rounds': best,
          'verdicts': verdicts, 'agreement': agree, 'notes': notes, 'timing_s': timing_s}
      pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
      pathlib.Path(args.out).write_text(json.dumps(figures, indent=1) + '\n')
      print(f'# wrote {args.out}')
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # The staged links (and the CSVs without --csv_dir).
  return 0


if __name__ == '__main__':
  sys.exit(main())
