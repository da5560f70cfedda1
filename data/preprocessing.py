"""Input preprocessing by name: the model does not guess its input range.

Both functions take images with values in [0, 255] (any float or integer dtype, any shape) and
return float32. They work on numpy arrays, jax arrays and TensorFlow tensors alike (they only use
arithmetic operators), so the tf.data pipeline and the model share one definition.

- `inception`: x / 127.5 - 1, range [-1, 1]; what the ImageNet weights were trained with.
- `rescale`:   x / 255, range [0, 1]; what the seed Keras notebook used
  (`ImageDataGenerator(rescale=1/255)`).
"""

from __future__ import annotations

from typing import Any, Callable


def _as_float32(images: Any) -> Any:
  if hasattr(images, 'astype'):  # numpy and jax arrays
    return images.astype('float32')
  import tensorflow as tf  # Only reached for tf tensors, where TF is already imported.
  return tf.cast(images, tf.float32)


def inception(images: Any) -> Any:
  """[0, 255] -> [-1, 1], the range InceptionV3's ImageNet weights expect."""
  return _as_float32(images) / 127.5 - 1.0


def rescale(images: Any) -> Any:
  """[0, 255] -> [0, 1], the seed notebook's `rescale=1/255`."""
  return _as_float32(images) / 255.0


PREPROCESSORS: dict[str, Callable[[Any], Any]] = {'inception': inception, 'rescale': rescale}


def get(name: str) -> Callable[[Any], Any]:
  """The preprocessing function called `name` ('inception' or 'rescale')."""
  try:
    return PREPROCESSORS[name]
  except KeyError:
    raise ValueError(f'Unknown preprocessing {name!r}; valid: {", ".join(PREPROCESSORS)}') from None
