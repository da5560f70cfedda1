"""Validates image files once, with PIL, so that training never meets a file it crashes on.

`check(path)` fully decodes a file and says whether it is usable and whether TensorFlow's
decoder can read it as it is (8-bit JPEG/PNG in a plain mode that TensorFlow's own decoder
accepts) or it needs a normalised RGB copy (`normalise`): CMYK JPEGs, 16-bit PNGs,
GIF/BMP/WEBP/TIFF, JPEGs/PNGs with damage only PIL tolerates, ... PIL is the reference
decoder here because Keras' `load_img` is PIL.

`check_many` runs checks in a thread pool (PIL releases the GIL while decoding) and caches
results per content hash in `<cache>/imagecheck-v<version>.json`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
from typing import Iterable

import numpy as np
from PIL import Image

from data import cache
from inception import paths

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp', '.tif', '.tiff')
# Largest accepted image, pixels (~134 MP, ~400 MB as RGB). PIL's default bomb guard (89 MP)
# rejects some legitimate panoramas; above this limit a file is skipped, never decoded.
MAX_PIXELS = 2**27
# PIL raises DecompressionBombError at 2 * MAX_IMAGE_PIXELS on open; raise its limit to ours
# so that our own, explicit size check (before decoding) is the one that applies.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
  Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Formats and modes TensorFlow's `decode_image(channels=3)` reads the way PIL does.
_TF_MODES = {'JPEG': {'RGB', 'L'}, 'PNG': {'RGB', 'RGBA', 'L', 'LA', 'P'}}
# 2: tf_ok also requires that TensorFlow decodes the file (v1 entries may say tf_ok wrongly).
# 3: reasons hold no object addresses (v2 entries may: PIL's messages name the BytesIO).
_CACHE_VERSION = 3
# An object's default repr, '<_io.BytesIO object at 0x7f...>': run-dependent, so kept out of
# reasons (they go into manifests, which must be the same bytes on every run).
_OBJECT_REPR = re.compile(r'<[^<>]* at 0x[0-9a-fA-F]+>')


@dataclasses.dataclass(frozen=True)
class Check:
  """Result of validating one file.

  ok: decodable image; reason: why not (empty when ok); tf_ok: TensorFlow decodes it as is
  (else use `normalise`); width/height: pixels; size: bytes; sha256: of the content.
  """
  ok: bool
  reason: str
  tf_ok: bool
  format: str
  mode: str
  width: int
  height: int
  size: int
  sha256: str


def _png_bit_depth(blob: bytes) -> int:
  # IHDR is the first chunk: 8-byte signature, length, 'IHDR', width, height, bit depth.
  return blob[24] if len(blob) > 24 and blob[12:16] == b'IHDR' else 8


def _tf_decodes(blob: bytes) -> bool:
  """TensorFlow's decoder (the pipeline's `decode`) reads `blob` without error.

  PIL is lenient where libjpeg/libpng in TensorFlow are not: it decodes a JPEG whose end
  (EOI) is cut off or whose entropy data runs short, and skips IDAT/IEND CRCs of a PNG; TF
  fails such a file mid-epoch. Those files are kept through a normalised copy instead.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data import decode  # pylint: disable=g-import-not-at-top
  try:
    decode.decode(tf.constant(blob))
  except tf.errors.OpError:
    return False
  return True


def check_bytes(blob: bytes) -> Check:
  """Validates encoded image bytes (see `Check`)."""
  digest = hashlib.sha256(blob).hexdigest()
  bad = lambda reason, fmt='', mode='', w=0, h=0: Check(False, reason, False, fmt, mode, w, h,
                                                         len(blob), digest)
  if not blob:
    return bad('empty file')
  try:
    with Image.open(io.BytesIO(blob)) as img:
      fmt, mode, (w, h) = img.format or '', img.mode, img.size
      if w * h > MAX_PIXELS:
        return bad(f'too large: {w}x{h} pixels > {MAX_PIXELS}', fmt, mode, w, h)
      if w < 1 or h < 1:
        return bad(f'empty image {w}x{h}', fmt, mode, w, h)
      img.load()  # Full decode: truncated and corrupt files fail here.
  except Image.DecompressionBombError as e:
    return bad(f'too large: {e}')
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...).
    return bad(f'not decodable: {type(e).__name__}: {_OBJECT_REPR.sub("<bytes>", str(e))}')
  tf_ok = (mode in _TF_MODES.get(fmt, ()) and not (fmt == 'PNG' and _png_bit_depth(blob) != 8)
           and _tf_decodes(blob))
  return Check(True, '', tf_ok, fmt, mode, w, h, len(blob), digest)


def check(path: str | os.PathLike) -> Check:
  """Validates the file at `path`; unreadable files are reported, not raised."""
  try:
    blob = pathlib.Path(path).read_bytes()
  except OSError as e:
    return Check(False, f'unreadable: {e}', False, '', '', 0, 0, 0, '')
  return check_bytes(blob)


def to_rgb_array(img: Image.Image) -> np.ndarray:
  """PIL image of any mode -> uint8 [H, W, 3], as Keras' `load_img(color_mode='rgb')` but
  scaling 16/32-bit integer images to 8 bits (PIL's own convert clips them)."""
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
    a = np.asarray(img).astype(np.float64)
    a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=-1)
  if img.mode == 'F':
    a = np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=-1)
  return np.asarray(img.convert('RGB'))


def normalise(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Writes `src` (any image PIL reads) as an 8-bit RGB PNG at `dst`, atomically."""
  with Image.open(src) as img:
    arr = to_rgb_array(img)
  with paths.atomic_write(dst) as f:  # Its temporary names are unique: threads may share a folder.
    Image.fromarray(arr, 'RGB').save(f, format='PNG', compress_level=1)


class _Cache:
  """sha256 -> Check, persisted as one JSON file (small: ~200 bytes per image)."""

  def __init__(self, path: pathlib.Path | None):
    self.path = path
    self.entries: dict[str, dict] = {}
    if path and path.exists():
      try:
        blob = json.loads(path.read_text())
        if blob.get('version') == _CACHE_VERSION and blob.get('max_pixels') == MAX_PIXELS:
          self.entries = blob['entries']
      except (OSError, ValueError, KeyError):
        self.entries = {}  # A corrupt cache is only a lost speed-up.

  def save(self) -> None:
    if self.path:
      paths.write_text(self.path, json.dumps({'version': _CACHE_VERSION,
                                              'max_pixels': MAX_PIXELS, 'entries': self.entries}))


def default_cache_path() -> pathlib.Path:
  return cache.cache_dir() / f'imagecheck-v{_CACHE_VERSION}.json'


def check_many(paths: Iterable[str | os.PathLike], *, workers: int | None = None,
               cache_path: pathlib.Path | None | str = 'default') -> list[Check]:
  """`check` of each path, in order, in parallel; cached per content hash (None: no cache)."""
  paths = list(paths)
  store = _Cache(default_cache_path() if cache_path == 'default' else
                 (pathlib.Path(cache_path) if cache_path else None))
  dirty = False

  def one(path):
    nonlocal dirty
    try:
      blob = pathlib.Path(path).read_bytes()
    except OSError as e:
      return Check(False, f'unreadable: {e}', False, '', '', 0, 0, 0, '')
    digest = hashlib.sha256(blob).hexdigest()
    hit = store.entries.get(digest)
    if hit is not None and hit.get('size') == len(blob):
      return Check(**hit)
    result = check_bytes(blob)
    store.entries[digest] = dataclasses.asdict(result)  # dict assignment is atomic in CPython.
    dirty = True
    return result

  workers = workers or min(8, (os.cpu_count() or 1) * 2)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = list(pool.map(one, paths))
  if dirty:
    try:
      store.save()
    except OSError:
      pass  # Read-only cache: validation still worked.
  return results
