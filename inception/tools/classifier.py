"""The Python API: a trained run's classifier, and pretrained backbone features without a run.

    import inception
    clf = inception.load('workdirs/dog_horse', checkpoint='best')
    probs = clf.predict(['a.jpg', 'b.png'])       # float32 [N, K], columns: clf.class_names
    probs = clf.predict(uint8_images)             # [N, H, W, 3], any H and W; or PIL images
    feats = clf.features(images)                  # the run's cut-layer features [N, h, w, C]
    feats = inception.features(images, weights='tf2015', endpoint='mixed7')   # no run needed

Images are resized and preprocessed exactly as the run's input pipeline does it (files are
decoded as the pipeline decodes them), in batches of one shape (compiled once) split over every
device; in a multi-process job every process passes the same images and gets every result.
Predictions are `--mode=predict`'s numbers: that mode runs on this class. The run's test-time
augmentation (eval.tta) and its temperature (`--mode=calibrate`) apply as they do in eval.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import data
from data import config as data_config
from inception import backbones
from inception import transfer
from inception.tools import evaluate
from inception.train import sharding
from inception.train import steps as steps_lib
from inception.train import xla_options

# What `predict` and `features` take: paths (str / os.PathLike) of image files, an array
# [N, H, W, 3] (uint8, or float on the 0..255 scale), or a sequence of [H, W, 3] arrays or PIL
# images (sizes may differ).
Images = Any


def _as_inputs(images: Images) -> tuple[str, list]:
  """('files', [path]) or ('arrays', [[H, W, 3] uint8/float32 array]); ValueError naming the
  item that is neither an image file nor an image."""
  if isinstance(images, (str, os.PathLike)):
    images = [images]
  if isinstance(images, (np.ndarray, jax.Array)):
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
      raise ValueError(f'images: an array must be [N, H, W, 3], got shape {arr.shape} (one image '
                       f'[H, W, 3]: pass images[None])')
    items = list(arr)
  else:
    items = list(images)
  if not items:
    raise ValueError('images is empty')
  if all(isinstance(x, (str, os.PathLike)) for x in items):
    for x in items:
      if not os.path.isfile(x):
        raise FileNotFoundError(f'images: {x} is not a file' + (
            ' (a folder: pass data.list_images(folder))' if os.path.isdir(x) else ''))
    return 'files', [os.fspath(x) for x in items]
  arrays = []
  for i, x in enumerate(items):
    if isinstance(x, (str, os.PathLike)):
      raise ValueError(f'images[{i}] is a path among in-memory images: pass one kind')
    if hasattr(x, 'convert') and hasattr(x, 'mode'):  # A PIL image, decoded as a file's RGB.
      x = np.asarray(x.convert('RGB'))
    a = np.asarray(x)
    if a.ndim != 3 or a.shape[-1] != 3:
      raise ValueError(f'images[{i}]: shape {a.shape}, expected [H, W, 3] (RGB)')
    if a.dtype != np.uint8:
      if a.dtype.kind not in 'fiu':
        raise ValueError(f'images[{i}]: dtype {a.dtype}, expected uint8 or float (0..255)')
      if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 255:
        raise ValueError(f'images[{i}]: values must be finite and within 0..255 (the scale of '
                         f'uint8 pixels), got {a.min()}..{a.max()}')
    arrays.append(a)
  return 'arrays', arrays


class _Runner:
  """Batched, sharded application of a jitted fn(variables, images [B, S, S, 3]) -> [B, ...]."""

  def __init__(self, variables, mesh, config_data, batch_size: int, log):
    self.variables, self.mesh, self.config_data = variables, mesh, config_data
    self.batch_size, self.log = batch_size, log

  def batches(self, images: Images):
    kind, items = _as_inputs(images)
    shard = dict(batch_size=self.batch_size, process_index=jax.process_index(),
                 process_count=jax.process_count())
    if kind == 'arrays':
      if all(a.dtype.kind == 'f' for a in items) and max(float(a.max()) for a in items) <= 1.0:
        self.log('WARNING: every image is within 0..1; images are read on the 0..255 scale '
                 '(multiply by 255 if they were scaled).')
      return len(items), data.array_batches(items, self.config_data, **shard)
    skipped = []
    usable = data.usable_images(items, log=skipped.append)
    if skipped:
      raise ValueError(f'{len(skipped)} of the images cannot be read: ' + '; '.join(skipped))
    return len(usable), self.file_batches([d for _, d in usable])

  def file_batches(self, decodable: Sequence[str]):
    return data.file_batches(decodable, np.zeros(len(decodable), np.int32), self.config_data,
                             batch_size=self.batch_size, process_index=jax.process_index(),
                             process_count=jax.process_count(), with_index=True)

  def run(self, fn: Callable, n: int, batches) -> np.ndarray:
    """fn's outputs for examples 0..n-1, in order, in every process."""
    out = None
    for batch in batches:
      dev = sharding.shard_batch({'image': batch['image'], 'index': batch['index']}, self.mesh)
      # The whole global batch in every process (several processes: gathered).
      values, index = sharding.to_host(fn(self.variables, dev['image'])), \
          sharding.to_host(dev['index'])
      if out is None:
        out = np.empty((n,) + values.shape[1:], values.dtype)
      real = index >= 0
      out[index[real]] = values[real]
    return out


class Classifier:
  """A trained run restored for inference (`load`).

  class_names: the columns of `predict`; image_size: S, the side images are resized to;
  checkpoint, step: what was restored; tta: the run's test-time augmentation; temperature: the
  temperature scaling applied (None: none fitted for this checkpoint).
  """

  def __init__(self, restored: evaluate.Restored, log: Callable[[str], None] = print):
    r = self.restored = restored
    self.class_names = tuple(r.record.class_names)
    self.image_size = int(r.config.data.image_size)
    self.checkpoint, self.step = r.checkpoint, int(r.meta['step'])
    self.tta, self.temperature = evaluate.tta_of(r.config), r.temperature
    repl, dsh = sharding.replicated(r.mesh), sharding.data_sharded(r.mesh)
    self._runner = _Runner(r.variables, r.mesh, r.config.data, r.batch_size, log)
    self._predict = steps_lib.make_predict_step(r.model, tta=self.tta,
                                                temperature=self.temperature,
                                                replicated=repl, batch_sharding=dsh)
    self._features = {
        pooled: jax.jit(lambda v, x, p=pooled: transfer.BackboneOnly(r.model, p).apply(v, x),
                        in_shardings=(repl, dsh), out_shardings=dsh,
                        compiler_options=xla_options.compiler_options())
        for pooled in (False, True)}

  def predict(self, images: Images) -> np.ndarray:
    """Class probabilities float32 [N, K] (K = len(class_names)) of `images` (see `Images`).

    A file that cannot be read as an image is an error naming it."""
    return self._runner.run(self._predict, *self._runner.batches(images))

  def predict_files(self, decodable: Sequence[str]) -> np.ndarray:
    """`predict` of files already checked by `data.usable_images` (its decodable paths)."""
    return self._runner.run(self._predict, len(decodable), self._runner.file_batches(decodable))

  def features(self, images: Images, *, pooled: bool = False) -> np.ndarray:
    """The run's cut-layer features float32 [N, h, w, C] of `images` (the backbone at
    `model.cut`, as trained); pooled: their spatial mean [N, C]."""
    return self._runner.run(self._features[bool(pooled)], *self._runner.batches(images))

  def describe(self) -> dict:
    """What makes the predictions: run, checkpoint, step, classes, image size, tta, temperature
    and the data the run was trained on."""
    r = self.restored
    return {'workdir': r.workdir,
            'checkpoint': self.checkpoint, 'step': self.step,
            'class_names': list(self.class_names), 'image_size': self.image_size,
            'tta': self.tta, 'temperature': self.temperature,
            'trained_on_synthetic_data': r.record.is_synthetic,
            'trained_on': r.record.data['description'], 'init_from': r.record.init_from}


def load(workdir: str | os.PathLike, checkpoint: str | int = 'latest', *,
         config: ml_collections.ConfigDict | None = None, tta: str | None = None,
         calibrated: bool = True, log: Callable[[str], None] = print) -> Classifier:
  """The run in `workdir` at `checkpoint` ('best', 'latest' or a step) as a `Classifier`,
  restored as eval and predict restore it (`inception.tools.evaluate.restore`: the workdir
  alone; `config` may change only the eval keys; `tta` overrides eval.tta; `calibrated=False`
  ignores a fitted temperature)."""
  return Classifier(evaluate.restore(workdir, str(checkpoint), config=config, tta=tta,
                                     calibrated=calibrated, log=log), log)


class FeatureExtractor:
  """Pretrained backbone features without a run: `backbone` with `weights` cut at `endpoint`.

  Images are resized to `image_size` with `resize_method` and preprocessed by `preprocess`
  (defaults: the weights' own 299 px, bilinear, 'inception' = x / 127.5 - 1), as a run's
  pipeline would with those settings. Call: images (see `Images`) -> float32 [N, h, w, C], or
  [N, C] with `pooled`. Build one and call it many times: it loads the weights and compiles once.
  """

  def __init__(self, weights: str = 'tf2015', endpoint: str = 'mixed7', *,
               backbone: str = 'inception_v3', image_size: int = 299,
               preprocess: str = 'inception', resize_method: str = 'bilinear',
               pooled: bool = False, batch_size: int = 32, log: Callable[[str], None] = print):
    entry = backbones.get(backbone)
    if endpoint not in entry.endpoints:
      raise ValueError(f'endpoint={endpoint!r} is not an endpoint of {backbone}; valid: '
                       f'{", ".join(entry.endpoints)}')
    if weights == 'random':
      raise ValueError("weights='random' has no pretrained features; name pretrained weights "
                       f'({", ".join(entry.weight_names)}) or a weights file')
    entry.check_weights(weights)
    if image_size < entry.min_image_size:
      raise ValueError(f'image_size={image_size} is below {backbone}\'s minimum '
                       f'{entry.min_image_size}')
    cfg = data_config.get_config()
    cfg.image_size, cfg.preprocess, cfg.resize_method = image_size, preprocess, resize_method
    data_config.validate(cfg)
    variables, provenance = entry.load_pretrained(weights, endpoint, log)
    module = entry.build(stop_at=endpoint, dtype=jnp.float32, name='backbone',
                         **provenance['variant'])
    mesh = sharding.make_mesh()
    devices = mesh.devices.size
    repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)

    def apply(v, x):
      feats = module.apply(v, x, ())
      return transfer.global_pool(feats) if pooled else feats

    self.provenance = provenance
    self._fn = jax.jit(apply, in_shardings=(repl, dsh), out_shardings=dsh,
                       compiler_options=xla_options.compiler_options())
    self._runner = _Runner(sharding.replicate(variables, mesh), mesh, cfg,
                           -(-batch_size // devices) * devices, log)

  def __call__(self, images: Images) -> np.ndarray:
    return self._runner.run(self._fn, *self._runner.batches(images))


def features(images: Images, weights: str = 'tf2015', endpoint: str = 'mixed7',
             **kwargs) -> np.ndarray:
  """`FeatureExtractor(weights, endpoint, **kwargs)(images)`: pretrained backbone features at
  any endpoint, without a run (one call; keep a FeatureExtractor for many)."""
  return FeatureExtractor(weights, endpoint, **kwargs)(images)
