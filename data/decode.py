"""Image decoding as Keras' `load_img` (PIL) does it, in TensorFlow ops for tf.data."""

from __future__ import annotations

import tensorflow as tf


def decode(raw: tf.Tensor) -> tf.Tensor:
  """Encoded bytes -> uint8 [H, W, 3], as PIL (Keras' load_img) decodes them.

  JPEGs use the accurate integer IDCT, PIL's; TF's default (INTEGER_FAST) differs by ~1 level.
  """
  img = tf.cond(
      tf.io.is_jpeg(raw),
      lambda: tf.io.decode_jpeg(raw, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8))
  img.set_shape([None, None, 3])
  return img


def resize(img: tf.Tensor, image_size: int, resize_method: str) -> tf.Tensor:
  """Image [H, W, 3] (uint8, or float on the 0..255 scale) -> float32 [S, S, 3], 0..255, as
  Keras' load_img resizes: 'nearest' as is, other methods antialiased and rounded to integers
  (PIL's filters return uint8)."""
  if resize_method == 'nearest':
    img = tf.image.resize(img, [image_size, image_size], method='nearest')
  else:
    img = tf.image.resize(img, [image_size, image_size], method=resize_method, antialias=True)
    img = tf.round(tf.clip_by_value(img, 0.0, 255.0))
  return tf.cast(img, tf.float32)


def decode_resize(path: tf.Tensor, image_size: int, resize_method: str) -> tf.Tensor:
  """File -> float32 [S, S, 3] on the 0..255 scale."""
  return resize(decode(tf.io.read_file(path)), image_size, resize_method)
