"""Keras `ImageDataGenerator` augmentation, in the TensorFlow graph.

Same parameter meanings, sampling and composition as tf_keras' `get_random_transform` +
`apply_transform` (tf_keras/src/preprocessing/image.py):

    theta ~ U(-rotation_range, rotation_range)            degrees
    tx    ~ U(-height_shift_range, +) * H  (if range < 1) pixels
    ty    ~ U(-width_shift_range, +) * W   (if range < 1) pixels
    shear ~ U(-shear_range, shear_range)                  DEGREES (Keras' unit)
    zx, zy ~ U(1 - zoom_range, 1 + zoom_range), independent
    flip  ~ Bernoulli(0.5) if horizontal_flip

`apply_affine_transform` composes M = R(theta) @ T(tx, ty) @ Shear(shear) @ Zoom(zx, zy),
centres it (offset (H/2 - 0.5, W/2 - 0.5)) and, for channels-last images, applies it with
scipy in (row, col) index space after swapping both axes of M. Undoing that swap, M maps
output (x=col, y=row) to input (x, y) coordinates, which is exactly the convention of
`ImageProjectiveTransformV3`; so tx, Keras' "height" shift, moves the image along columns and
the centring offset of x is H/2 - 0.5 -- Keras' quirks, kept (equal ranges and square images
make them invisible in the seed recipe). Bilinear interpolation and 'nearest' fill on
integer pixel centres match scipy's order=1, mode='nearest' (and 'constant', emulated; 'reflect'
and 'wrap' use TF's modes as they are). The flip comes after the affine
transform, as in Keras. Images are float [H, W, C] on the 0..255 scale (Keras augments the
resized image before `rescale`).
"""

from __future__ import annotations

import math

import ml_collections
import tensorflow as tf

NUM_RANDOM = 7  # theta, tx, ty, shear, zx, zy, flip


def is_identity(config_augment: ml_collections.ConfigDict) -> bool:
  """True when the knobs make augmentation a no-op (or it is disabled)."""
  a = config_augment
  return not a.enabled or not any((a.rotation_range, a.width_shift_range, a.height_shift_range,
                                   a.shear_range, a.zoom_range, a.horizontal_flip))


def _shift(u, shift_range: float, size):
  """Keras: fraction of `size` when the range is < 1, else pixels."""
  s = (2.0 * u - 1.0) * shift_range
  return s * tf.cast(size, tf.float32) if shift_range < 1 else s


def random_parameters(config_augment: ml_collections.ConfigDict, seed, height, width) -> dict:
  """Keras' transform parameters for one image, from a stateless `seed` (int32/int64 [2]).

  Returns float32 scalars theta, tx, ty, shear (degrees/pixels), zx, zy and bool flip.
  """
  a = config_augment
  u = tf.random.stateless_uniform([NUM_RANDOM], seed=seed, dtype=tf.float32)
  zoom = float(a.zoom_range)
  return {
      'theta': (2.0 * u[0] - 1.0) * float(a.rotation_range),
      'tx': _shift(u[1], float(a.height_shift_range), height),
      'ty': _shift(u[2], float(a.width_shift_range), width),
      'shear': (2.0 * u[3] - 1.0) * float(a.shear_range),
      'zx': 1.0 - zoom + 2.0 * zoom * u[4],
      'zy': 1.0 - zoom + 2.0 * zoom * u[5],
      'flip': tf.logical_and(u[6] < 0.5, bool(a.horizontal_flip)),
  }


def transform_vector(theta, tx, ty, shear, zx, zy, height, width) -> tf.Tensor:
  """The 8 projective coefficients (output x,y -> input x,y) of Keras' affine transform.

  Args: theta, shear in degrees; tx, ty in pixels; zx, zy scales (scalars or [B] each);
    height, width of the image.
  Returns: float32 [8] (or [B, 8]) for `ImageProjectiveTransformV3`.
  """
  f = lambda v: tf.cast(v, tf.float32)
  t, s = f(theta) * (math.pi / 180.0), f(shear) * (math.pi / 180.0)
  tx, ty, zx, zy = f(tx), f(ty), f(zx), f(zy)
  c, n = tf.cos(t), tf.sin(t)
  # R @ T @ Shear @ Zoom, written out (rows [a b cx], [d e cy]):
  # R @ T = [[c, -n, c*tx - n*ty], [n, c, n*tx + c*ty]];
  # Shear = [[1, -sin(s), 0], [0, cos(s), 0]]; Zoom = diag(zx, zy).
  ss, cs = tf.sin(s), tf.cos(s)
  a = c * zx
  b = (-c * ss - n * cs) * zy
  d = n * zx
  e = (-n * ss + c * cs) * zy
  cx = c * tx - n * ty
  cy = n * tx + c * ty
  # transform_matrix_offset_center(M, H, W): offset (H/2 - 0.5) on x, (W/2 - 0.5) on y.
  ox = tf.cast(height, tf.float32) / 2.0 - 0.5
  oy = tf.cast(width, tf.float32) / 2.0 - 0.5
  zero = tf.zeros_like(a)
  return tf.stack([a, b, cx + ox - a * ox - b * oy, d, e, cy + oy - d * ox - e * oy, zero,
                   zero], axis=-1)


def apply_batch(images: tf.Tensor, params: dict, *, fill_mode: str = 'nearest',
                cval: float = 0.0) -> tf.Tensor:
  """Keras' `apply_transform` on float32 [B, H, W, C] images, per-image `params` ([B] each;
  'flip' optional)."""
  shape = tf.shape(images)
  h, w = shape[1], shape[2]
  vec = transform_vector(params['theta'], params['tx'], params['ty'], params['shear'],
                         params['zx'], params['zy'], h, w)
  # scipy's 'constant' (order=1) interpolates with clamped neighbours inside the image and
  # gives cval for sample points outside [0, n-1]; TF's CONSTANT would instead blend cval into
  # a one-pixel rim. So: clamp ('nearest'), then put cval where the sample point is outside.
  tf_mode = 'NEAREST' if fill_mode == 'constant' else fill_mode.upper()
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=vec, output_shape=tf.stack([h, w]),
      fill_value=tf.cast(cval, tf.float32), interpolation='BILINEAR', fill_mode=tf_mode)
  if fill_mode == 'constant':
    ys, xs = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32),
                         indexing='ij')
    v = vec[:, :, None, None]
    x_in = v[:, 0] * xs + v[:, 1] * ys + v[:, 2]
    y_in = v[:, 3] * xs + v[:, 4] * ys + v[:, 5]
    inside = ((x_in >= 0) & (x_in <= tf.cast(w - 1, tf.float32)) & (y_in >= 0)
              & (y_in <= tf.cast(h - 1, tf.float32)))
    out = tf.where(inside[..., None], out, tf.cast(cval, out.dtype))
  if 'flip' in params:  # After the affine transform, as Keras.
    flip = tf.reshape(tf.cast(params['flip'], tf.bool), [-1, 1, 1, 1])
    out = tf.where(flip, tf.reverse(out, [2]), out)
  return out


def apply(image: tf.Tensor, params: dict, *, fill_mode: str = 'nearest',
          cval: float = 0.0) -> tf.Tensor:
  """Keras' `apply_transform` on one float32 [H, W, C] image with given scalar `params`."""
  batched = {k: tf.reshape(v, [1]) for k, v in params.items()}
  return apply_batch(image[None], batched, fill_mode=fill_mode, cval=cval)[0]


def random_augment(image: tf.Tensor, seed, config_augment: ml_collections.ConfigDict
                   ) -> tf.Tensor:
  """Augments one float32 [H, W, C] 0..255 image with randomness from stateless `seed` [2]."""
  if is_identity(config_augment):
    return image
  shape = tf.shape(image)
  params = random_parameters(config_augment, seed, shape[0], shape[1])
  return apply(image, params, fill_mode=config_augment.fill_mode, cval=config_augment.cval)
