"""Helpers for tests of the data package: small image trees with every kind of bad file."""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from PIL import Image

from inception import paths


def random_image(rng: np.random.Generator, height: int, width: int, mean: float = 128.0
                 ) -> np.ndarray:
  """uint8 [H, W, 3]: a smooth gradient plus noise around `mean` (compresses realistically)."""
  yy, xx = np.mgrid[0:height, 0:width]
  base = mean + 40 * np.sin(xx / 7.0 + rng.uniform(0, 6))[..., None] * np.array([1, .5, -1])
  base = base + 30 * np.cos(yy / 5.0 + rng.uniform(0, 6))[..., None] * np.array([-1, 1, .5])
  return np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def write_jpeg(path: os.PathLike, array: np.ndarray, quality: int = 92) -> None:
  Image.fromarray(array).save(path, format='JPEG', quality=quality)


def write_good(folder: os.PathLike, count: int, rng: np.random.Generator, *, size=(48, 64),
               mean: float = 128.0, prefix: str = 'img') -> list[pathlib.Path]:
  """`count` valid RGB JPEGs `<prefix>_<i>.jpg` in `folder`."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  out = []
  for i in range(count):
    p = folder / f'{prefix}_{i:03d}.jpg'
    write_jpeg(p, random_image(rng, size[0], size[1], mean))
    out.append(p)
  return out


def write_bad_and_exotic(folder: os.PathLike, rng: np.random.Generator) -> dict[str, str]:
  """Writes every awkward case into `folder`; returns {file name: expected outcome}.

  Outcomes: 'skip' (unusable), 'normalise' (PIL-only decoding), 'link' (TF reads as is),
  'ignore' (not an image extension).
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  a = random_image(rng, 40, 56)
  cases = {}
  (folder / 'zero_bytes.jpg').write_bytes(b'')
  cases['zero_bytes.jpg'] = 'skip'
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format='JPEG', quality=95)
  (folder / 'truncated.jpg').write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  cases['truncated.jpg'] = 'skip'
  (folder / 'text_named.jpg').write_text('this is not an image\n' * 20)
  cases['text_named.jpg'] = 'skip'
  (folder / 'not_png.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(rng.integers(0, 255, 100,
                                                                               dtype=np.uint8)))
  cases['not_png.png'] = 'skip'
  Image.fromarray(a).convert('CMYK').save(folder / 'cmyk.jpg', format='JPEG', quality=95)
  cases['cmyk.jpg'] = 'normalise'
  gray16 = (a[..., 0].astype(np.uint16) * 257)
  Image.fromarray(gray16).save(folder / 'gray16.png')
  cases['gray16.png'] = 'normalise'
  Image.fromarray(a).save(folder / 'pixels.bmp')
  cases['pixels.bmp'] = 'normalise'
  Image.fromarray(a).convert('P').save(folder / 'anim.gif')
  cases['anim.gif'] = 'normalise'
  Image.fromarray(a).save(folder / 'lossless.webp', lossless=True)
  cases['lossless.webp'] = 'normalise'
  Image.fromarray(a).convert('P', palette=Image.Palette.ADAPTIVE).save(folder / 'palette.png')
  cases['palette.png'] = 'link'
  Image.fromarray(a).convert('L').save(folder / 'gray.jpg', quality=95)
  cases['gray.jpg'] = 'link'
  rgba = np.concatenate([a, rng.integers(0, 255, a.shape[:2] + (1,), dtype=np.uint8)], -1)
  Image.fromarray(rgba, 'RGBA').save(folder / 'rgba.png')
  cases['rgba.png'] = 'link'
  big = np.repeat(np.repeat(a, 50, axis=0), 50, axis=1)  # 2000 x 2800 pixels.
  write_jpeg(folder / 'large.JPEG', big, quality=80)
  cases['large.JPEG'] = 'link'
  (folder / 'notes.txt').write_text('not a candidate')
  cases['notes.txt'] = 'ignore'
  return cases


def tree_hashes(root: os.PathLike) -> dict[str, str]:
  """{relative path: sha256} of every file (and link target) under `root`."""
  root = pathlib.Path(root)
  out = {}
  for p in sorted(root.rglob('*')):
    if p.is_file() or p.is_symlink():
      out[p.relative_to(root).as_posix()] = paths.file_digest(p)
  return out
