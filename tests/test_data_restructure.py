"""Restructuring: bad files, determinism, untouched source, re-runs, CLI."""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import imagecheck
from data import pipeline
from data import restructure
from data.sources import animals10
from data.sources import folder
from data import testing

GOOD_DOG, GOOD_HORSE = 14, 20  # Uneven classes.


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  """Animals-10-like tree: raw-img/cane (good + every bad case), cavallo, gatto."""
  root = tmp_path_factory.mktemp('animals10')
  rng = np.random.default_rng(0)
  raw = root / 'raw-img'
  testing.write_good(raw / 'cane', GOOD_DOG, rng, prefix='dog')
  cases = testing.write_bad_and_exotic(raw / 'cane', rng)
  testing.write_good(raw / 'cavallo', GOOD_HORSE, rng, prefix='horse')
  testing.write_good(raw / 'gatto', 3, rng, prefix='cat')
  return root, cases


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))


def _source(tree, classes=('dog', 'cavallo')):
  root, _ = tree
  return animals10.animals10_source(animals10.find_raw_img(root), classes, 'test')


def _run(tree, out, **kw):
  args = dict(images_per_class=10, validation_fraction=0.2, seed=0, log=lambda s: None)
  args.update(kw)
  return restructure.restructure(_source(tree), out, **args)


def test_bad_files_skipped_exotic_normalised_and_everything_decodes(tree, tmp_path):
  root, cases = tree
  before = testing.tree_hashes(root)
  m = _run(tree, tmp_path / 'out')
  assert testing.tree_hashes(root) == before  # Source untouched, nothing added.

  skipped = {s['source'].split('/', 1)[1]: s['reason'] for s in m['skipped']}
  assert set(skipped) == {n for n, o in cases.items() if o == 'skip'}
  assert skipped['zero_bytes.jpg'] == 'empty file'
  assert 'truncated' in skipped['truncated.jpg']
  assert m['ignored'] == ['cane/notes.txt']
  usable_dog = GOOD_DOG + sum(o in ('normalise', 'link') for o in cases.values())
  assert m['num_examples'] == {'train': 16, 'validation': 4,
                               'test': usable_dog - 10 + GOOD_HORSE - 10}
  assert m['classes'] == ['dog', 'horse']
  assert m['class_folders'] == {'dog': 'cane', 'horse': 'cavallo'}

  entries = {e['source']: e for s in restructure.SPLITS for e in m['splits'][s]}
  for name, outcome in cases.items():
    e = entries.get(f'cane/{name}')
    if outcome in ('skip', 'ignore'):
      assert e is None
    elif outcome == 'normalise':
      assert e['stored'] == 'normalised' and e['path'].endswith(f'{name}.png'), e
      assert f'cane/{name}' in m['normalised']
    else:
      assert e['stored'] == 'symlink', e
  # Every stored file decodes with TF to PIL's RGB decoding of the source (Keras' load_img).
  for e in entries.values():
    got = pipeline.decode(tf.io.read_file(str(tmp_path / 'out' / e['path']))).numpy()
    with Image.open(animals10.find_raw_img(root) / e['source']) as img:
      want = imagecheck.to_rgb_array(img)
    assert got.shape == want.shape == (e['height'], e['width'], 3)
    np.testing.assert_array_equal(got, want, err_msg=e['source'])
    assert e['sha256'] == imagecheck.check(animals10.find_raw_img(root) / e['source']).sha256
  # 16-bit grey is scaled to 8 bits (v * 257 -> v), not clipped as PIL's convert would.
  g16 = entries['cane/gray16.png']
  got = np.asarray(Image.open(tmp_path / 'out' / g16['path']))
  with Image.open(animals10.find_raw_img(root) / 'cane/gray16.png') as img:
    np.testing.assert_array_equal(got[..., 0], np.asarray(img).astype(np.int64) // 257)


def test_split_is_balanced_deterministic_and_pcg64_shuffled(tree, tmp_path):
  m1 = _run(tree, tmp_path / 'a')
  m2 = _run(tree, tmp_path / 'b', link_mode='copy')
  m3 = _run(tree, tmp_path / 'c', seed=1)
  key = lambda m: {s: [e['source'] for e in m['splits'][s]] for s in restructure.SPLITS}
  assert key(m1) == key(m2)
  assert key(m1) != key(m3)
  for m in (m1, m3):
    labels = [e['label'] for e in m['splits']['train']]
    assert labels.count(0) == labels.count(1) == 8
  # The documented algorithm: sorted usable names, PCG64((seed, crc32(class))) permutation,
  # validation first, then train, then test.
  usable = sorted(e['source'].split('/', 1)[1] for s in restructure.SPLITS
                  for e in m1['splits'][s] if e['label'] == 1)
  order = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
      [0, zlib.crc32(b'horse')]))).permutation(len(usable))
  horse = lambda split: sorted(e['source'].split('/', 1)[1] for e in m1['splits'][split]
                               if e['label'] == 1)
  assert horse('validation') == sorted(usable[i] for i in order[:2])
  assert horse('train') == sorted(usable[i] for i in order[2:10])
  assert horse('test') == sorted(usable[i] for i in order[10:])
  # Copies are regular files with the source's bytes.
  e = m2['splits']['train'][0]
  p = tmp_path / 'b' / e['path']
  assert not p.is_symlink() and imagecheck.check(p).sha256 == e['sha256']


def test_test_split_cap_and_none(tree, tmp_path):
  assert _run(tree, tmp_path / 'a', test_per_class=3)['num_examples']['test'] == 6
  assert _run(tree, tmp_path / 'b', test_per_class=0)['num_examples']['test'] == 0


def test_too_many_requested_says_how_many(tree, tmp_path):
  with pytest.raises(ValueError, match=r"class 'horse' .* has 20 usable images .* at most 20"):
    _run(tree, tmp_path / 'out', images_per_class=21)


def test_rerun_noop_refusal_overwrite_and_interrupted(tree, tmp_path):
  out = tmp_path / 'out'
  m = _run(tree, out)
  mtime = (out / 'manifest.json').stat().st_mtime_ns
  logs = []
  assert _run(tree, out, log=logs.append) == m
  assert (out / 'manifest.json').stat().st_mtime_ns == mtime
  assert 'nothing to do' in logs[0]
  with pytest.raises(FileExistsError, match=r'seed: 0 -> 1'):
    _run(tree, out, seed=1)
  foreign = out / 'train' / 'dog' / 'mine.txt'
  foreign.write_text('keep me')
  m2 = _run(tree, out, seed=1, overwrite=True, images_per_class=6)
  assert foreign.read_text() == 'keep me'  # Overwrite removes only what it wrote.
  written = {e['path'] for s in restructure.SPLITS for e in m2['splits'][s]}
  on_disk = {p.relative_to(out).as_posix() for p in out.rglob('*')
             if p.is_file() and p.name != 'mine.txt' and p.parent != out}
  assert on_disk == written
  # Interrupted run: marker present, no manifest -> redone from scratch.
  (out / 'manifest.json').unlink()
  (out / restructure.MARKER).write_text('{}')
  m3 = _run(tree, out, seed=1, images_per_class=6)
  assert m3['splits'] == m2['splits'] and not (out / restructure.MARKER).exists()
  # A damaged subset (a file removed) with the same arguments is redone.
  os.unlink(out / m3['splits']['train'][0]['path'])
  _run(tree, out, seed=1, images_per_class=6)
  assert (out / m3['splits']['train'][0]['path']).exists()


def test_a_source_file_edited_in_place_redoes_the_subset(tmp_path, monkeypatch):
  """Symlinked subsets see their sources' edits: the rerun finds the manifest's sha256 stale
  and redoes the subset, so its manifest (and a run's record of it) describes the bytes."""
  raw = tmp_path / 'animals10' / 'raw-img'
  rng = np.random.default_rng(1)
  testing.write_good(raw / 'cane', 6, rng, prefix='dog')
  testing.write_good(raw / 'cavallo', 6, rng, prefix='horse')
  src = animals10.animals10_source(raw, ('dog', 'cavallo'), 'test')
  out = tmp_path / 'out'
  run = lambda log: restructure.restructure(src, out, images_per_class=4,
                                            validation_fraction=0.25, seed=0, log=log)
  m = run(lambda _: None)
  sha = restructure.manifest_sha256(out)
  entry = m['splits']['train'][0]
  testing.write_jpeg(raw / entry['source'],  # 'cane/dog_000.jpg', under the source root
                     testing.random_image(rng, 48, 64, mean=40.0))
  logs = []
  m2 = run(logs.append)
  assert any(l.startswith(f'The subset in {out} no longer matches its manifest (')
             and 'sha256 differs' in l for l in logs), logs
  new = {e['path']: e['sha256'] for e in m2['splits']['train']}
  assert entry['path'] not in new or new[entry['path']] != entry['sha256']
  assert restructure.manifest_sha256(out) != sha
  logs = []
  assert run(logs.append) == m2 and 'nothing to do' in logs[0]  # Stable again.
  # The no-op does not read unchanged files again (their size and mtime are recorded) ...
  reads = []
  real_read = restructure.verified_split
  monkeypatch.setattr(restructure, 'verified_split',
                      lambda *a, **k: reads.append(a[2]) or real_read(*a, **k))
  assert run(lambda _: None) == m2 and reads == []
  # ... but an edit that keeps the size still shows in the mtime, and is caught by the hash.
  entry = m2['splits']['validation'][0]
  target = raw / entry['source']
  blob = bytearray(target.read_bytes())
  blob[-3] ^= 0xFF  # Inside the JPEG data, before its end marker: same size, other bytes.
  target.write_bytes(bytes(blob))
  logs = []
  m3 = run(logs.append)
  assert reads and any('no longer matches its manifest' in l for l in logs), logs
  assert m3 != m2


def test_refuses_foreign_non_empty_folder(tree, tmp_path):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'thesis.tex').write_text('precious')
  with pytest.raises(FileExistsError, match='not written by data.restructure'):
    _run(tree, tmp_path / 'out')


def test_class_names_both_languages_and_errors(tree):
  src = _source(tree, ('cavallo', 'Dog'))
  assert src.classes == (('horse', 'cavallo'), ('dog', 'cane'))
  with pytest.raises(ValueError, match="'wolf' is not an Animals-10 class"):
    _source(tree, ('dog', 'wolf'))
  with pytest.raises(FileNotFoundError, match='has no folder mucca/'):
    _source(tree, ('dog', 'cow'))
  # A folder source accepts Animals-10 names when only the translation is a folder.
  root, _ = tree
  fs = folder.folder_source(root / 'raw-img', ('dog', 'horse'))
  assert fs.classes == (('dog', 'cane'), ('horse', 'cavallo'))
  assert [c for c, _ in folder.folder_source(root / 'raw-img', ()).classes] == [
      'cane', 'cavallo', 'gatto']


def test_cli(tree, tmp_path, capsys):
  root, _ = tree
  rc = restructure.main(['--source', str(root), '--out', str(tmp_path / 'out'), '--classes',
                         'cane,horse', '--images-per-class', '5', '--test-per-class', '1'])
  assert rc == 0
  m = json.loads((tmp_path / 'out' / 'manifest.json').read_text())
  assert m['num_examples'] == {'train': 8, 'validation': 2, 'test': 2}
  assert 'skipped (unusable): 4' in capsys.readouterr().out
  rc = restructure.main(['--source', str(root), '--out', str(tmp_path / 'out'), '--seed', '3',
                         '--images-per-class', '5'])
  assert rc == 2 and 'other arguments' in capsys.readouterr().err


def test_cli_synthetic_source(tmp_path):
  rc = restructure.main(['--source', 'synthetic', '--out', str(tmp_path / 'out'),
                         '--images-per-class', '10', '--test-per-class', '0'])
  assert rc == 0
  m = json.loads((tmp_path / 'out' / 'manifest.json').read_text())
  assert m['source']['is_synthetic'] and m['num_examples'] == {'train': 18, 'validation': 2,
                                                               'test': 0}


def test_validation_cache_hits(tree, tmp_path):
  root, _ = tree
  files = sorted((animals10.find_raw_img(root) / 'cane').glob('*'))
  cache = tmp_path / 'checks.json'
  first = imagecheck.check_many(files, cache_path=cache)
  assert cache.exists()
  stored = json.loads(cache.read_text())['entries']
  assert len(stored) == len({c.sha256 for c in first if c.sha256})
  assert imagecheck.check_many(files, cache_path=cache) == first


def test_manifest_bytes_are_the_same_on_every_cold_run(tree, tmp_path):
  # The tree has undecodable files: PIL's messages for them name a BytesIO object's address,
  # which must not reach the manifest (two runs would differ in those lines).
  outs = []
  for run in ('a', 'b'):
    out = tmp_path / run / 'subset'  # Same relative layout; cold validation cache each time.
    restructure.restructure(animals10.animals10_source(animals10.find_raw_img(tree[0]),
                                                     ('dog', 'horse'), 'test'),
                            out, images_per_class=10, test_per_class=-1, log=lambda _: None,
                            check_cache=tmp_path / run / 'imagecheck.json')
    outs.append((out / restructure.MANIFEST).read_bytes())
  manifest = json.loads(outs[0])
  reasons = [s['reason'] for s in manifest['skipped']]
  assert any('not decodable' in r for r in reasons), reasons
  assert not any(' at 0x' in r for r in reasons), reasons
  assert outs[0] == outs[1]
