"""Bad inputs: a seeded fuzz of damaged JPEG/PNG files through restructuring and the pipeline
(no crash, no hang, every bad file reported, every good one kept), unreadable and empty class
folders."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data
from data import config as config_lib
from data import imagecheck
from data import restructure
from data.sources import folder
from data import testing

SEED = 20240611  # The fuzz is reproducible: same files on every run.
FLIPS = 24  # Byte-flipped variants per source image.


@contextlib.contextmanager
def _deadline(seconds: int):
  """Fails (instead of hanging the suite) when the block runs longer than `seconds`."""
  def on_alarm(signum, frame):
    raise TimeoutError(f'took longer than {seconds} s (hang?)')
  old = signal.signal(signal.SIGALRM, on_alarm)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt, **kw)
  return buf.getvalue()


def _png_with_size(blob: bytes, w: int, h: int) -> bytes:
  """The PNG with IHDR declaring w x h (CRC fixed, so only the size is wrong)."""
  b = bytearray(blob)
  b[16:24] = struct.pack('>II', w, h)
  b[29:33] = struct.pack('>I', zlib.crc32(bytes(b[12:29])))
  return bytes(b)


def _jpeg_with_size(blob: bytes, w: int, h: int) -> bytes:
  """The JPEG with its SOF segment declaring w x h."""
  b = bytearray(blob)
  i = 2
  while b[i + 1] not in (0xC0, 0xC1, 0xC2):
    i += 2 + struct.unpack('>H', b[i + 2:i + 4])[0]
  b[i + 5:i + 9] = struct.pack('>HH', h, w)
  return bytes(b)


def mutants(rng: np.random.Generator) -> dict[str, bytes]:
  """{file name: bytes} of damaged versions of one JPEG, one PNG and one palette PNG."""
  a = testing.random_image(rng, 48, 64)
  srcs = {'rgb.jpg': _encode(Image.fromarray(a), 'JPEG', quality=90),
          'prog.jpg': _encode(Image.fromarray(a), 'JPEG', quality=90, progressive=True),
          'rgb.png': _encode(Image.fromarray(a), 'PNG'),
          'pal.png': _encode(Image.fromarray(a).convert('P', palette=Image.Palette.ADAPTIVE),
                             'PNG')}
  out = {}
  for name, blob in srcs.items():
    stem, ext = name.split('.')
    for frac in (0.01, 0.1, 0.5, 0.9, 0.99):
      out[f'{stem}_cut{int(frac * 100):02d}.{ext}'] = blob[:int(len(blob) * frac)]
    for k in (1, 2, 5, 12):  # The last bytes: JPEG EOI, PNG IEND and its CRC.
      out[f'{stem}_cutlast{k}.{ext}'] = blob[:-k]
    for k in range(FLIPS):
      b = bytearray(blob)
      # Half of the flips in the headers (tables, IHDR/PLTE), half anywhere.
      limit = min(len(b), 600 if ext == 'jpg' else 100) if k % 2 else len(b)
      for _ in range(int(rng.integers(1, 4))):
        b[int(rng.integers(0, limit))] ^= int(rng.integers(1, 256))
      out[f'{stem}_flip{k:02d}.{ext}'] = bytes(b)
  jpg, png = srcs['rgb.jpg'], srcs['rgb.png']
  out['png_bytes_named.jpg'] = png  # Wrong extension, good content: usable.
  out['jpeg_magic_png.jpg'] = b'\x89PNG\r\n\x1a\n' + jpg[8:]
  out['png_magic_jpeg.png'] = b'\xff\xd8\xff\xe0' + png[4:]
  out['huge_header.png'] = _png_with_size(png, 60000, 60000)
  out['huge_header.jpg'] = _jpeg_with_size(jpg, 60000, 60000)
  # Declares 16 of its 48 rows and lacks the EOI: PIL decodes it, TensorFlow does not.
  out['short_no_eoi.jpg'] = _jpeg_with_size(jpg, 64, 16)[:-2]
  out['zero.jpg'] = b''
  out['zero.png'] = b''
  out['text.jpg'] = b'this is not an image\n' * 30
  out['html.png'] = b'<!DOCTYPE html><html><body>404 Not Found</body></html>\n'
  return out


def _pil_decodes(blob: bytes) -> bool:
  """The oracle, independent of data.imagecheck: PIL (Keras' load_img) fully decodes it."""
  try:
    with Image.open(io.BytesIO(blob)) as img:
      if img.size[0] * img.size[1] > imagecheck.MAX_PIXELS:
        return False
      img.load()
    return True
  except Exception:  # pylint: disable=broad-except
    return False


@pytest.fixture(scope='module')
def fuzz_tree(tmp_path_factory):
  """Two classes: 'jpeg' and 'png', each with 6 good images plus that format's mutants."""
  root = tmp_path_factory.mktemp('fuzz') / 'tree'
  rng = np.random.default_rng(SEED)
  good = {c: [] for c in ('jpeg', 'png')}
  for i, p in enumerate(testing.write_good(root / 'jpeg', 6, rng, prefix='good')):
    good['jpeg'].append(p.name)
  (root / 'png').mkdir()
  for i in range(6):
    name = f'good_{i:03d}.png'
    Image.fromarray(testing.random_image(rng, 40, 56)).save(root / 'png' / name)
    good['png'].append(name)
  bad_names = {}
  for name, blob in mutants(rng).items():
    cls = 'jpeg' if name.endswith('.jpg') else 'png'
    (root / cls / name).write_bytes(blob)
    bad_names[f'{cls}/{name}'] = blob
  return root, good, bad_names


def test_fuzz_restructure_reports_every_bad_file_and_keeps_every_good_one(fuzz_tree, tmp_path,
                                                                          monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  root, good, mutated = fuzz_tree
  undecodable = {k for k, blob in mutated.items() if not _pil_decodes(blob)}
  assert len(undecodable) > 40 and len(mutated) - len(undecodable) > 10  # Both kinds occur.
  with _deadline(60):
    m = restructure.restructure(folder.folder_source(root, ()), tmp_path / 'out',
                                images_per_class=4, validation_fraction=0.25,
                                log=lambda s: None)
  kept = {e['source']: e for s in restructure.SPLITS for e in m['splits'][s]}
  skipped = {s['source']: s['reason'] for s in m['skipped']}
  assert set(skipped) == undecodable
  assert all(skipped.values())
  for cls, names in good.items():
    assert {f'{cls}/{n}' for n in names} <= set(kept)
  assert set(kept) | set(skipped) == {f'{c}/{n}' for c, ns in good.items() for n in ns} | set(
      mutated)
  for name in ('huge_header.png', 'huge_header.jpg'):
    key = f'{"jpeg" if name.endswith("jpg") else "png"}/{name}'
    assert skipped[key].startswith('too large: ') and '60000' in skipped[key], skipped[key]
  assert skipped['jpeg/zero.jpg'] == 'empty file'
  # Files only PIL tolerates (JPEG without EOI, PNG without IEND's CRC) are kept through a
  # normalised copy, which TensorFlow reads.
  assert kept['jpeg/short_no_eoi.jpg']['stored'] == 'normalised'
  assert kept['png/rgb_cutlast1.png']['stored'] == 'normalised'

  # Every kept file goes through the tf.data pipeline: each split once, and training epochs.
  c = config_lib.get_config()
  c.source, c.path, c.classes, c.dir = 'folder', str(root), (), str(tmp_path / 'out')
  c.images_per_class, c.validation_fraction, c.image_size = 4, 0.25, 32
  c.test_per_class = -1
  info = data.prepare(c, log=lambda s: None)
  with _deadline(90):
    for split in ('train', 'validation', 'test'):
      n = sum(int(b['mask'].sum()) for b in data.eval_batches(info, c, split=split,
                                                                batch_size=16))
      assert n == m['num_examples'][split]
    it = data.train_batches(info, c, batch_size=2, seed=0)
    for _ in range(2 * data.steps_per_epoch(info, 2)):
      assert np.isfinite(next(it)['image']).all()


def test_fuzz_prediction_folder_skips_bad_files(fuzz_tree, tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  root, good, mutated = fuzz_tree
  undecodable = {k for k, blob in mutated.items() if not _pil_decodes(blob)}
  c = config_lib.get_config()
  c.image_size = 32
  logs: list[str] = []
  with _deadline(60):
    batches = list(data.folder_batches(root, c, batch_size=16, log=logs.append))
  paths = {Path(p).relative_to(root).as_posix() for b in batches
           for p, keep in zip(b['path'], b['mask']) if keep}
  assert paths == {f'{c}/{n}' for c, ns in good.items() for n in ns} | (
      set(mutated) - undecodable)
  assert sorted(l.split('skipping ')[1].split(':')[0] for l in logs) == sorted(
      str(root / k) for k in undecodable)


def _restructure(root, out, **kw):
  args = dict(images_per_class=2, validation_fraction=0.5, log=lambda s: None)
  args.update(kw)
  return restructure.restructure(folder.folder_source(root, ()), out, **args)


def test_empty_class_names_the_folder(tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  testing.write_good(tmp_path / 'tree' / 'cat', 3, np.random.default_rng(0))
  (tmp_path / 'tree' / 'dog').mkdir()
  (tmp_path / 'tree' / 'dog' / 'readme.txt').write_text('photos go here')
  (tmp_path / 'tree' / 'dog' / 'broken.jpg').write_bytes(b'')
  with pytest.raises(ValueError, match=r"class 'dog': folder .*tree/dog has no usable images "
                     r'\(1 skipped as invalid, 1 other files ignored'):
    _restructure(tmp_path / 'tree', tmp_path / 'out')


def test_class_with_too_few_images_says_how_many(tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  testing.write_good(tmp_path / 'tree' / 'cat', 3, np.random.default_rng(0))
  testing.write_good(tmp_path / 'tree' / 'dog', 1, np.random.default_rng(1))
  with pytest.raises(ValueError, match=r"class 'dog' .* has 1 usable images .* "
                     r'images_per_class=2 .* use at most 1'):
    _restructure(tmp_path / 'tree', tmp_path / 'out')


def test_unlistable_class_folder_is_an_error_not_too_few_images(tmp_path, monkeypatch):
  """Works as root too: os.walk is made to report what a chmod 000 folder reports."""
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  testing.write_good(tmp_path / 'tree' / 'cat', 3, np.random.default_rng(0))
  testing.write_good(tmp_path / 'tree' / 'dog' / 'sub', 3, np.random.default_rng(1))
  real_walk = os.walk

  def walk(top, onerror=None, **kw):
    for entry in real_walk(top, onerror=onerror, **kw):
      if Path(entry[0]).name == 'sub':
        onerror(PermissionError(13, 'Permission denied', entry[0]))
        continue
      yield entry
  monkeypatch.setattr(restructure.os, 'walk', walk)
  with pytest.raises(PermissionError, match=r'cannot list .*tree/dog/sub: Permission denied '
                     r'\(1 unreadable folder\(s\) under .*tree/dog\)'):
    _restructure(tmp_path / 'tree', tmp_path / 'out')


def test_unreadable_file_is_skipped_with_the_reason(tmp_path, monkeypatch):
  """Runs as root too (CI): reading one file fails as a chmod 000 file does for a user. (An
  unreadable folder: the injected os.walk error of
  test_unlistable_class_folder_is_an_error_not_too_few_images.)"""
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  testing.write_good(tmp_path / 'tree' / 'cat', 3, np.random.default_rng(0))
  files = testing.write_good(tmp_path / 'tree' / 'dog', 3, np.random.default_rng(1))
  real_read = Path.read_bytes

  def read_bytes(self):
    if self == files[0]:
      raise PermissionError(13, 'Permission denied', str(self))
    return real_read(self)
  monkeypatch.setattr(Path, 'read_bytes', read_bytes)
  m = _restructure(tmp_path / 'tree', tmp_path / 'out')
  assert [s['source'] for s in m['skipped']] == [f'dog/{files[0].name}']
  assert m['skipped'][0]['reason'].startswith('unreadable: [Errno 13] Permission denied')
