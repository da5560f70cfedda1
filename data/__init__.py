"""Data for inception-flax: sources, restructuring, tf.data pipelines, Keras augmentation.

    info = data.prepare(config.data)          # resolve, restructure (once), describe
    for batch in data.train_batches(info, config.data, batch_size=20, seed=0): ...
    for batch in data.eval_batches(info, config.data, split='validation', batch_size=20): ...
"""

# TensorFlow is only the input pipeline here: keep it off the accelerators so that JAX owns
# them (and TF does not reserve their memory).
import tensorflow as _tf

for _kind in ('GPU', 'TPU'):
  try:
    _tf.config.set_visible_devices([], _kind)
  except Exception:  # No such device type, or TF already initialised.  pylint: disable=broad-except
    pass

from inception import lazy  # pylint: disable=g-import-not-at-top,wrong-import-position

# Re-exports, imported on first use so that `python -m data.restructure` (and friends) run
# their module only once.
_EXPORTS = {'DatasetInfo': 'data.dataset', 'prepare': 'data.dataset',
            'train_batches': 'data.pipeline', 'eval_batches': 'data.pipeline',
            'folder_batches': 'data.pipeline', 'file_batches': 'data.pipeline',
            'array_batches': 'data.pipeline',
            'list_images': 'data.pipeline', 'usable_images': 'data.pipeline',
            'steps_per_epoch': 'data.pipeline'}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy.exports(__name__, _EXPORTS, globals())
