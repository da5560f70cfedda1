"""The `config.data` section: every knob of the data package, documented, and its validation.

Defaults reproduce the seed notebook: Animals-10 dog vs horse, 500 images per class split
450/50, 150 px, `rescale` (x/255), Keras `flow_from_directory` resizing ('nearest') and the
notebook's `ImageDataGenerator` augmentation.
"""

from __future__ import annotations

import math
import os
import pathlib

import ml_collections

from inception import checks

SOURCES = ('animals10', 'folder', 'synthetic', 'tfds')
PREPROCESSINGS = ('rescale', 'inception')  # Names in `data.preprocessing`.
RESIZE_METHODS = ('nearest', 'bilinear', 'bicubic', 'area', 'lanczos3')
LINK_MODES = ('symlink', 'copy')
SPLIT_MODES = ('resplit', 'folders')
SAMPLINGS = ('none', 'balanced')
FILL_MODES = ('nearest', 'constant', 'reflect', 'wrap')


def get_config() -> ml_collections.ConfigDict:
  """The default `config.data`; the seed notebook's recipe."""
  c = ml_collections.ConfigDict()
  # Where the images come from:
  #   'animals10': Kaggle Animals-10 (`raw-img/<italian class>/*`), found at `path`,
  #                $ANIMALS10_DIR, the kagglehub cache, or a kagglehub download.
  #   'folder':    any class-folder tree `<path>/<class>/*`.
  #   'synthetic': the project's generated stripes data set (see `synthetic`).
  #   'tfds':      the `animals10` TFDS builder (data/sources/tfds_animals10.py); `path` is its
  #                manual download dir (found like 'animals10' when empty).
  c.source = 'animals10'
  # Path of the source: for animals10/tfds the folder holding `raw-img/` or `raw-img` itself,
  # for folder the class-folder root. Empty: search (animals10/tfds only). An explicit path
  # that does not exist is an error, never replaced by synthetic data.
  c.path = ''
  # Class names, in label order (label i = classes[i]). Animals-10 accepts English or Italian
  # names (output uses English). For 'folder', folder names (an Animals-10 name is translated
  # when only its translation exists); empty = every sub-folder, sorted. Ignored by 'synthetic'.
  c.classes = ('dog', 'horse')
  # How the splits are made:
  #   'resplit': each class's images are split by the keys below (the seed's recipe).
  #   'folders': `path/<split>/<class>/*` used as given (source 'folder' only): train/ and
  #              validation/ required, test/ optional; every usable image is used; classes are
  #              the union of the split folders (each must be in train/); the four keys below
  #              are ignored.
  c.splits = 'resplit'
  # Images per class in the train+validation subset (classes are balanced). 0 = every usable
  # image of each class (classes may then differ in size; test_per_class N > 0 holds N of each
  # class out for test first, -1 and 0 then mean no test split).
  c.images_per_class = 500
  # Fraction of `images_per_class` held out for validation (0.1: 450/50), rounded half up.
  c.validation_fraction = 0.1
  # Images per class of the held-out test split, taken from those not in the subset:
  # -1 = all the rest, 0 = no test split.
  c.test_per_class = -1
  # Seed of the subset choice (numpy PCG64 on the sorted file names).
  c.split_seed = 0
  # Square side, pixels, that images are resized to (before augmentation, as Keras).
  c.image_size = 150
  # Name in `data.preprocessing`: 'rescale' (x/255, the seed's) or 'inception' (x/127.5-1).
  c.preprocess = 'rescale'
  # tf.image.resize method. 'nearest' is Keras `flow_from_directory`'s default interpolation.
  c.resize_method = 'nearest'
  # How the restructured subset refers to the source files: 'symlink' or 'copy'.
  c.link_mode = 'symlink'
  # Where the restructured subset goes; empty = <cache>/datasets/<hash of the arguments>,
  # <cache> = $INCEPTION_FLAX_CACHE or $XDG_CACHE_HOME/inception-flax or ~/.cache/inception-flax.
  c.dir = ''
  # source='animals10' with no explicit path and no data found: train on synthetic data
  # (announced loudly) instead of failing.
  c.fallback_to_synthetic = True
  # The synthetic data set (generated deterministically, written as JPEGs under the cache).
  c.synthetic = ml_collections.ConfigDict()
  # Classes K, 2..10: stripe orientations 0, 180/K, ... degrees (stripes_000, stripes_090 for
  # K=2; configs/animals10.py uses 10). Changing K changes every class's images and the cache key.
  c.synthetic.num_classes = 2
  c.synthetic.images_per_class = 120  # The train+validation subset, per class.
  c.synthetic.test_per_class = 30     # Extra images per class for the test split.
  c.synthetic.image_size = 160        # Side, pixels, of the generated JPEGs.
  c.synthetic.seed = 0
  # Training augmentation, Keras `ImageDataGenerator` semantics (evaluation never augments).
  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = True
  c.augment.rotation_range = 40.0     # Degrees; uniform in [-r, r].
  c.augment.width_shift_range = 0.2   # < 1: fraction of the width; >= 1: pixels.
  c.augment.height_shift_range = 0.2  # < 1: fraction of the height; >= 1: pixels.
  c.augment.shear_range = 0.2         # Degrees (Keras' unit); uniform in [-r, r].
  c.augment.zoom_range = 0.2          # Independent x/y scale in [1 - r, 1 + r].
  c.augment.horizontal_flip = True    # Probability 0.5.
  c.augment.fill_mode = 'nearest'     # 'nearest' | 'constant' | 'reflect' | 'wrap'.
  c.augment.cval = 0.0                # Fill value for 'constant', on the 0..255 scale.
  # tf.data knobs.
  c.shuffle_buffer = 1000   # Kept for compatibility; epochs use a full permutation.
  # Training order: 'none' = each epoch a permutation of the training examples; 'balanced' =
  # each epoch num_train draws with replacement, every class equally likely (same seeding).
  c.sampling = 'none'
  c.num_parallel_calls = -1  # -1 = AUTOTUNE.
  c.deterministic = True     # Element order independent of thread timing.
  c.prefetch = 2             # Batches prefetched (-1 = AUTOTUNE).
  # Keep the decoded, resized training images in memory after the first pass (exact: the
  # resize is deterministic); skipped when they would take more than this many MiB.
  c.cache_decoded_mib = 1024
  return c


def validate(config_data: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key, its value and what is valid. No I/O but
  the existence of an explicit `path`."""
  c = config_data
  checks.choice('data.source', c.source, SOURCES)
  checks.choice('data.preprocess', c.preprocess, PREPROCESSINGS)
  checks.choice('data.resize_method', c.resize_method, RESIZE_METHODS)
  checks.choice('data.link_mode', c.link_mode, LINK_MODES)
  checks.choice('data.splits', c.splits, SPLIT_MODES)
  checks.choice('data.sampling', c.sampling, SAMPLINGS)
  if c.splits == 'folders' and c.source != 'folder':
    raise ValueError(f"config.data.splits='folders' needs config.data.source='folder' (the "
                     f"root holding train/, validation/ and test/), not {c.source!r}; a "
                     f"{c.source} source has no split folders: use data.splits='resplit'")
  checks.choice('data.augment.fill_mode', c.augment.fill_mode, FILL_MODES)
  if c.path and not pathlib.Path(os.path.expanduser(c.path)).exists():
    raise ValueError(f'config.data.path={c.path!r} does not exist; point it at the data set '
                     '(for Animals-10 the folder holding raw-img/) or leave it empty to search')
  if c.source == 'folder' and not c.path:
    raise ValueError("config.data.path is empty but config.data.source='folder' needs the "
                     'class-folder root')
  classes = tuple(c.classes)
  if c.source != 'synthetic':
    if not all(isinstance(x, str) and x for x in classes):
      raise ValueError(f'config.data.classes={classes!r} must be non-empty strings')
    if len(set(classes)) != len(classes):
      raise ValueError(f'config.data.classes={classes!r} has duplicates')
    if c.source in ('animals10', 'tfds') and len(classes) < 2:
      raise ValueError(f'config.data.classes={classes!r} needs at least two classes')
  checks.number('data.images_per_class', c.images_per_class, lo=0, integer=True)
  checks.number('data.validation_fraction', c.validation_fraction, lo=0.0, hi=0.99)
  n = c.images_per_class
  if n and math.floor(n * c.validation_fraction + 0.5) >= n:  # 0 (every image): per class, later.
    raise ValueError(f'config.data.validation_fraction={c.validation_fraction} leaves no '
                     f'training images of config.data.images_per_class={c.images_per_class}')
  checks.number('data.test_per_class', c.test_per_class, lo=-1, integer=True)
  checks.number('data.split_seed', c.split_seed, lo=0, integer=True)
  checks.number('data.image_size', c.image_size, lo=8, hi=4096, integer=True)
  checks.number('data.synthetic.num_classes', c.synthetic.num_classes, lo=2, hi=10, integer=True)
  checks.number('data.synthetic.images_per_class', c.synthetic.images_per_class, lo=2, integer=True)
  checks.number('data.synthetic.test_per_class', c.synthetic.test_per_class, lo=0, integer=True)
  checks.number('data.synthetic.image_size', c.synthetic.image_size, lo=32, hi=1024, integer=True)
  checks.number('data.synthetic.seed', c.synthetic.seed, lo=0, integer=True)
  a = c.augment
  checks.number('data.augment.rotation_range', a.rotation_range, lo=0, hi=180)
  checks.number('data.augment.width_shift_range', a.width_shift_range, lo=0)
  checks.number('data.augment.height_shift_range', a.height_shift_range, lo=0)
  checks.number('data.augment.shear_range', a.shear_range, lo=0, hi=89)
  checks.number('data.augment.zoom_range', a.zoom_range, lo=0, hi=0.99)
  checks.number('data.augment.cval', a.cval)
  checks.number('data.num_parallel_calls', c.num_parallel_calls, lo=-1, integer=True)
  if c.num_parallel_calls == 0:
    raise ValueError('config.data.num_parallel_calls=0 is not valid; use -1 (AUTOTUNE) or >= 1')
  checks.number('data.prefetch', c.prefetch, lo=-1, integer=True)
  checks.number('data.shuffle_buffer', c.shuffle_buffer, lo=0, integer=True)
  checks.number('data.cache_decoded_mib', c.cache_decoded_mib, lo=0)
