"""tf.data input pipelines that yield numpy batches ready for JAX.

Images: float32 [B, H, W, 3], preprocessed by `data.preprocessing.get(config.preprocess)`;
labels int32 [B]. Decoding: `tf.io.decode_image(channels=3, expand_animations=False)` (files
were validated by the restructuring), resize to image_size x image_size with
`config.resize_method` ('nearest' = Keras `flow_from_directory`'s default), then, for training,
Keras-equivalent augmentation (`data.augment`) on the 0..255 image, then preprocessing.

Determinism and resumption: the order of epoch e is numpy's PCG64 permutation seeded by
(seed, e) (`config.sampling='balanced'`: n draws with replacement from that generator, each
class equally likely); global step s takes the s-th `batch_size` slice of it (drop
remainder), and process p of P takes the p-th 1/P of that global batch. Augmentation randomness of an example is a
stateless function of (seed, global step, position in the global batch). So the batches from
`start_step=k` equal those of an uninterrupted run from step k on, for any process count.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from typing import Callable, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from data import augment
from data import cache
from data.decode import decode, decode_resize, resize  # pylint: disable=unused-import  # Also public here.
from data import imagecheck
from data import restructure
from data import preprocessing

_AUG_SEED_SALT = 0x5EED_A06  # Separates augmentation streams from other uses of `seed`.


@functools.lru_cache(maxsize=8)
def _read_manifest(root: str, manifest_sha256: str) -> dict:
  del manifest_sha256  # Only part of the cache key: a rewritten manifest is re-read.
  return json.loads((pathlib.Path(root) / restructure.MANIFEST).read_text())


def split_files(info, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(absolute paths str [N], labels int32 [N]) of `split` in manifest order."""
  manifest = _read_manifest(str(info.root), info.manifest_sha256)
  if split not in manifest['splits']:
    raise ValueError(f'split={split!r} is not in {info.root}/{restructure.MANIFEST}; valid: '
                     f'{", ".join(manifest["splits"])}')
  entries = manifest['splits'][split]
  paths = np.array([str(pathlib.Path(info.root) / e['path']) for e in entries], dtype=object)
  labels = np.array([e['label'] for e in entries], dtype=np.int32)
  return paths.astype(str) if len(paths) else np.zeros([0], str), labels


def local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  """This process's share of a global batch; ValueError unless it divides evenly."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, process_count='
                     f'{process_count})')
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} must be a positive multiple of process_count='
                     f'{process_count}')
  return batch_size // process_count


def _npc(config_data) -> int:
  return tf.data.AUTOTUNE if config_data.num_parallel_calls == -1 else config_data.num_parallel_calls


def _finish(ds: tf.data.Dataset, config_data) -> tf.data.Dataset:
  prefetch = tf.data.AUTOTUNE if config_data.prefetch == -1 else config_data.prefetch
  return ds.prefetch(prefetch) if prefetch else ds


def steps_per_epoch(info, batch_size: int) -> int:
  """Training steps per epoch: num_train // batch_size (drop remainder; seed 900 // 20 = 45)."""
  n = info.num_examples['train']
  if batch_size < 1 or n // batch_size < 1:
    raise ValueError(f'batch_size={batch_size} is larger than the {n} training examples')
  return n // batch_size


def _balanced_weights(labels: np.ndarray) -> np.ndarray:
  """Per example 1 / (classes * its class's count): every class drawn equally often."""
  labels = np.asarray(labels)
  _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  return 1.0 / (len(counts) * counts[inverse.ravel()])


def epoch_indices(n: int, batch_size: int, local: int, process_index: int, seed: int,
                  start_step: int, *, labels: np.ndarray | None = None, sampling: str = 'none'
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Per epoch from start_step's: (example index, global step, position in global batch).

  sampling: 'none' (a permutation of the n examples per epoch) or 'balanced' (n draws with
  replacement, example weight 1 / (classes * its class's size); needs `labels` [n]).
  """
  if sampling not in ('none', 'balanced'):
    raise ValueError(f'sampling={sampling!r} is not valid; valid: none, balanced')
  if sampling == 'balanced':
    if labels is None or len(labels) != n:
      raise ValueError(f"sampling='balanced' needs the {n} training labels")
    weights = _balanced_weights(labels)
  spe = n // batch_size
  epoch = start_step // spe
  lo, hi = process_index * local, (process_index + 1) * local
  while True:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    if sampling == 'balanced':
      order = rng.choice(n, size=n, replace=True, p=weights)
    else:
      order = rng.permutation(n)
    order = order[:spe * batch_size].reshape(spe, batch_size)
    steps = np.arange(epoch * spe, (epoch + 1) * spe)
    keep = steps >= start_step
    idx = order[keep, lo:hi]
    step = np.broadcast_to(steps[keep][:, None], idx.shape)
    pos = np.broadcast_to(np.arange(lo, hi)[None, :], idx.shape)
    yield idx.ravel().astype(np.int64), step.ravel().astype(np.int64), pos.ravel().astype(np.int64)
    epoch += 1


def _decoded_cache(paths: np.ndarray, config_data) -> np.ndarray | None:
  """uint8 [N, S, S, 3] of every file, or None when over `cache_decoded_mib`."""
  s = config_data.image_size
  if len(paths) * s * s * 3 > config_data.cache_decoded_mib * 2**20:
    return None
  fn = lambda p: tf.cast(decode_resize(p, s, config_data.resize_method), tf.uint8)
  ds = tf.data.Dataset.from_tensor_slices(paths).map(fn, num_parallel_calls=_npc(config_data),
                                                     deterministic=True).batch(256)
  out = np.empty([len(paths), s, s, 3], np.uint8)
  i = 0
  for b in ds.as_numpy_iterator():
    out[i:i + len(b)] = b
    i += len(b)
  return out


def train_batches(info, config_data: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1
                  ) -> Iterator[dict]:
  """Infinite training batches {'image': float32 [B, S, S, 3], 'label': int32 [B]}.

  B = batch_size // process_count (batch_size is global). Augmented when
  config_data.augment.enabled. See the module doc for determinism and resumption.
  """
  local = local_batch_size(batch_size, process_index, process_count)
  if seed < 0 or start_step < 0:
    raise ValueError(f'seed={seed} and start_step={start_step} must be >= 0')
  paths, labels = split_files(info, 'train')
  n = len(paths)
  steps_per_epoch(info, batch_size)  # Validates batch_size against n.
  s = config_data.image_size
  preprocess = preprocessing.get(config_data.preprocess)
  aug_cfg = config_data.augment
  decoded = _decoded_cache(paths, config_data)
  paths_t, labels_t = tf.constant(paths), tf.constant(labels)
  images_t = None if decoded is None else tf.constant(decoded)
  salt = tf.constant(_AUG_SEED_SALT ^ int(seed), tf.int64)

  def load(i, step, pos):
    if images_t is not None:
      img = tf.cast(tf.gather(images_t, i), tf.float32)
    else:
      img = decode_resize(tf.gather(paths_t, i), s, config_data.resize_method)
    # Per example (not per batch): tf.data then spreads the transforms over the cores, where
    # one batched ImageProjectiveTransformV3 would keep them on one.
    img = augment.random_augment(img, tf.stack([salt, step * batch_size + pos]), aug_cfg)
    img.set_shape([s, s, 3])
    return {'image': preprocess(img), 'label': tf.gather(labels_t, i)}

  gen = functools.partial(epoch_indices, n, batch_size, local, process_index, int(seed),
                          int(start_step), labels=labels, sampling=config_data.sampling)
  spec = tf.TensorSpec([None], tf.int64)
  ds = tf.data.Dataset.from_generator(gen, output_signature=(spec, spec, spec))
  ds = ds.unbatch()
  ds = ds.map(load, num_parallel_calls=_npc(config_data),
              deterministic=bool(config_data.deterministic))
  ds = _finish(ds.batch(local, drop_remainder=True), config_data)
  yield from ds.as_numpy_iterator()


def padded_indices(n: int, batch_size: int, local: int, process_index: int) -> np.ndarray:
  """Example index per slot of this process's batches, -1 for padding; every index once."""
  num_batches = math.ceil(n / batch_size)
  idx = np.full(num_batches * batch_size, -1, np.int64)
  idx[:n] = np.arange(n)
  lo = process_index * local
  return idx.reshape(num_batches, batch_size)[:, lo:lo + local].ravel()


def _padded_batches(paths: np.ndarray, labels: np.ndarray, config_data, batch_size: int,
                    process_index: int, process_count: int, with_index: bool) -> Iterator[dict]:
  local = local_batch_size(batch_size, process_index, process_count)
  idx = padded_indices(len(paths), batch_size, local, process_index)
  if not len(idx):
    return
  s = config_data.image_size
  preprocess = preprocessing.get(config_data.preprocess)
  paths_t, labels_t = tf.constant(paths, tf.string), tf.constant(labels, tf.int32)

  def load(i):
    valid = i >= 0
    j = tf.maximum(i, 0)
    img = tf.cond(valid, lambda: decode_resize(tf.gather(paths_t, j), s,
                                               config_data.resize_method),
                  lambda: tf.zeros([s, s, 3], tf.float32))
    img.set_shape([s, s, 3])
    out = {'image': preprocess(img),
           'label': tf.where(valid, tf.gather(labels_t, j), 0), 'mask': valid}
    if with_index:
      out['index'] = i
    return out

  ds = tf.data.Dataset.from_tensor_slices(idx).map(load, num_parallel_calls=_npc(config_data),
                                                   deterministic=True)
  ds = _finish(ds.batch(local), config_data)
  yield from ds.as_numpy_iterator()


def eval_batches(info, config_data: ml_collections.ConfigDict, *, split: str = 'validation',
                 batch_size: int, process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict]:
  """One pass over `split`: {'image', 'label', 'mask': bool [B]}, no augmentation.

  Every example appears exactly once over all processes; the last global batch is padded
  (mask False, image zeros, label 0) so every batch has B = batch_size // process_count.
  """
  paths, labels = split_files(info, split)
  yield from _padded_batches(paths, labels, config_data, batch_size, process_index,
                             process_count, with_index=False)


def file_batches(paths: Sequence[str], labels: Sequence[int],
                 config_data: ml_collections.ConfigDict, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1, with_index: bool = False
                 ) -> Iterator[dict]:
  """`eval_batches` over an explicit list of files and labels (e.g. a run's recorded split);
  with_index: also 'index': int [B], each example's position in `paths` (-1 = padding)."""
  paths = np.array(paths, dtype=str) if len(paths) else np.zeros([0], str)
  yield from _padded_batches(paths, np.asarray(labels, np.int32), config_data, batch_size,
                             process_index, process_count, with_index=with_index)


def array_batches(images: Sequence[np.ndarray], config_data: ml_collections.ConfigDict, *,
                  batch_size: int, process_index: int = 0, process_count: int = 1
                  ) -> Iterator[dict]:
  """`file_batches` of images held in memory: each [H, W, 3] (any H and W; uint8, or float on
  the 0..255 scale) resized and preprocessed as a decoded file is. Yields {'image': float32
  [B, S, S, 3], 'mask': bool [B], 'index': int [B] (position in `images`, -1 = padding)}."""
  local = local_batch_size(batch_size, process_index, process_count)
  idx = padded_indices(len(images), batch_size, local, process_index)
  if not len(idx):
    return
  s = config_data.image_size
  preprocess = preprocessing.get(config_data.preprocess)
  padding = np.zeros([1, 1, 3], np.float32)

  def examples():
    for i in idx:
      yield (np.asarray(images[i], np.float32) if i >= 0 else padding), i

  def load(img, i):
    out = resize(img, s, config_data.resize_method)
    out.set_shape([s, s, 3])
    return {'image': preprocess(out), 'mask': i >= 0, 'index': i}

  ds = tf.data.Dataset.from_generator(
      examples, output_signature=(tf.TensorSpec([None, None, 3], tf.float32),
                                  tf.TensorSpec([], tf.int64)))
  ds = ds.map(load, num_parallel_calls=_npc(config_data), deterministic=True)
  yield from _finish(ds.batch(local), config_data).as_numpy_iterator()


def list_images(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[pathlib.Path]:
  """Image files (by extension, no hidden ones) of a folder (recursively, sorted), a file or a
  list of them, in order."""
  items = [path] if isinstance(path, (str, os.PathLike)) else list(path)
  files = []
  for item in map(pathlib.Path, items):
    if item.is_dir():
      files += sorted(p for p in item.rglob('*') if p.is_file() and not p.name.startswith('.')
                      and p.suffix.lower() in imagecheck.IMAGE_EXTENSIONS)
    elif item.is_file():
      files.append(item)
    else:
      raise FileNotFoundError(f'{item} (folder_batches path) does not exist')
  return files


def usable_images(path: str | os.PathLike | Sequence[str | os.PathLike],
                  log: Callable[[str], None] = print) -> list[tuple[str, str]]:
  """(file, file to decode) of each usable image of a folder (recursively, sorted), a file or a
  list, in order. Unusable files are skipped with a message; files TensorFlow would not
  decode as PIL does are decoded from a normalised PNG copy in the cache."""
  usable = []
  files = list_images(path)
  for f, chk in zip(files, imagecheck.check_many(files)):
    if not chk.ok:
      log(f'folder_batches: skipping {f}: {chk.reason}')
    elif chk.tf_ok:
      usable.append((str(f), str(f)))
    else:
      norm = cache.cache_dir() / 'normalised' / f'{chk.sha256}.png'
      if not norm.exists():
        norm.parent.mkdir(parents=True, exist_ok=True)
        imagecheck.normalise(f, norm)
      usable.append((str(f), str(norm)))
  return usable


def folder_batches(path: str | os.PathLike | Sequence[str | os.PathLike],
                   config_data: ml_collections.ConfigDict, *, batch_size: int,
                   process_index: int = 0, process_count: int = 1,
                   log: Callable[[str], None] = print) -> Iterator[dict]:
  """Prediction batches of any files (`usable_images`), shared between processes as
  `eval_batches`.

  Yields {'image': float32 [B, S, S, 3], 'mask': bool [B], 'path': str [B] ('' = padding),
  'index': int [B] (position among the usable images, -1 = padding)} and an unused 'label'.
  """
  usable = usable_images(path, log)
  originals = np.array([o for o, _ in usable] + [''], dtype=str)  # [-1] = '' for padding.
  for batch in file_batches([r for _, r in usable], np.zeros(len(usable), np.int32),
                            config_data, batch_size=batch_size, process_index=process_index,
                            process_count=process_count, with_index=True):
    batch['path'] = originals[batch['index']]  # Decode the readable file, report the original.
    yield batch
