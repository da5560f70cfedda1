"""Turns a class-folder source into the seed's structured subset, deterministically.

    out/train/<class>/*        images_per_class * (1 - validation_fraction) per class
    out/validation/<class>/*   images_per_class * validation_fraction per class
    out/test/<class>/*         the class's remaining images (capped by test_per_class)
    out/manifest.json          source, classes, arguments, every file with its source path,
                               size and sha256, skipped files with the reason

Choice: per class, the usable files' names are sorted, then permuted with numpy's PCG64
seeded by (seed, crc32(class name)); the first images_per_class form the subset (the first
images_per_class * validation_fraction (rounded half up) of them validation), the rest the test
split.
Same files and seed give the same split on any machine. images_per_class=0: every usable
image of the class, less test_per_class N > 0 held out for test (the last N of the order);
-1 and 0 then mean no test split.

splits='folders' (a source with `split_folders`, `data.sources.folder.split_folder_source`):
`root/<split>/<class>/*` used as given, every usable image in its own split; a class without
images in validation/ or test/ is reported, one without usable training images is an error.

Every candidate is validated once (`data.imagecheck`): unusable files are skipped and
reported; files TensorFlow would not decode as PIL does get a normalised RGB PNG copy.
The source is never modified. The manifest is written last (temp file + rename): a folder
without one is an interrupted run and is redone. A rerun with the same arguments is a no-op
only while every listed file still holds its recorded bytes (`.verified.json` keeps their size
and mtime from the last full check, so unchanged files are not read again); otherwise the
subset is redone.

CLI: python -m data.restructure --source PATH|synthetic --out DIR [--classes dog,horse] ...
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import os
import pathlib
import shutil
import sys
import zlib
from typing import Callable

import numpy as np

from data import cache
from data import imagecheck
from data import sources
from data.sources import animals10
from data.sources import folder
from inception import paths

MANIFEST = 'manifest.json'
MARKER = '.restructure-in-progress.json'
# Size and mtime of each listed file when the subset was last verified (see `_intact`).
VERIFIED = '.verified.json'
SPLITS = ('train', 'validation', 'test')
FORMAT = 1


def _class_rng(seed: int, name: str) -> np.random.Generator:
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
      [int(seed), zlib.crc32(name.encode('utf-8'))])))


def _list_class(folder: pathlib.Path) -> tuple[list[str], list[str]]:
  """(image candidates, other files) as sorted paths relative to `folder`.

  Raises PermissionError for a folder (or subfolder) that can't be listed: a silently
  skipped folder would only show up later as "too few images".
  """
  errors: list[OSError] = []
  for _ in os.walk(folder, onerror=errors.append):
    pass
  if errors:
    e = errors[0]
    raise PermissionError(f'cannot list {e.filename}: {e.strerror} ({len(errors)} unreadable '
                          f'folder(s) under {folder}); fix the permissions (chmod -R u+rX) '
                          'or leave that class out')
  images, other = [], []
  for p in folder.rglob('*'):
    if p.name.startswith('.') or not p.is_file():
      continue
    rel = p.relative_to(folder).as_posix()
    (images if p.suffix.lower() in imagecheck.IMAGE_EXTENSIONS else other).append(rel)
  return sorted(images), sorted(other)


def arguments(source: sources.Source, images_per_class, validation_fraction, test_per_class,
              seed, link_mode, splits: str = 'resplit') -> dict:
  """The restructuring's arguments as the manifest records them (they also key its folder).

  splits='resplit' (the default) adds no key, so earlier manifests and cache folders stay
  valid; 'folders' records only what it uses (the split keys are ignored there).
  """
  args = {'format': FORMAT, 'source_kind': source.kind, 'source_root': str(source.root),
          'classes': [list(c) for c in source.classes]}
  if splits == 'resplit':
    args.update(images_per_class=int(images_per_class),
                validation_fraction=float(validation_fraction),
                test_per_class=int(test_per_class), seed=int(seed))
  else:
    args['splits'] = splits
  args['link_mode'] = link_mode
  return args


def split_sizes(images_per_class: int, validation_fraction: float) -> tuple[int, int]:
  """(train, validation) images per class; validation rounded half up (5 * 0.1 -> 1)."""
  n_val = int(math.floor(images_per_class * validation_fraction + 0.5))
  return images_per_class - n_val, n_val


def _remove_written(out: pathlib.Path, manifest: dict) -> None:
  """Deletes what a manifest says was written (and then-empty split folders), nothing else."""
  for split in SPLITS:
    for entry in manifest['splits'].get(split, []):
      p = out / entry['path']
      if p.is_symlink() or p.exists():
        p.unlink()
  for split in SPLITS:
    for d in sorted((out / split).glob('*'), reverse=True) if (out / split).is_dir() else []:
      if d.is_dir() and not any(d.iterdir()):
        d.rmdir()
    if (out / split).is_dir() and not any((out / split).iterdir()):
      (out / split).rmdir()
  (out / MANIFEST).unlink(missing_ok=True)
  (out / VERIFIED).unlink(missing_ok=True)


def _changed_keys(old: dict, new: dict) -> str:
  keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  return ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in keys)


def _stamps(out: pathlib.Path, manifest: dict) -> dict[str, list[int]]:
  """{path: [size, mtime_ns]} of every listed file (symlinks followed); raises OSError."""
  stamps = {}
  for split in SPLITS:
    for entry in manifest['splits'][split]:
      st = os.stat(out / entry['path'])
      stamps[entry['path']] = [st.st_size, st.st_mtime_ns]
  return stamps


def _intact(out: pathlib.Path, manifest: dict, log: Callable[[str], None]) -> bool:
  """Every file `manifest` lists is under `out` with the bytes it recorded (sha256).

  A source file edited in place shows through its symlink, and training on it under the old
  manifest would change a run's data without a trace. Every file is read and hashed, unless
  `VERIFIED` holds the size and mtime each had when it was last found intact and none changed
  (each start of a run would otherwise read the whole subset again).
  """
  try:
    stamps = _stamps(out, manifest)
  except OSError:
    stamps = None
  try:
    known = json.loads((out / VERIFIED).read_text())
  except (OSError, ValueError):
    known = None
  if stamps is not None and known == {'manifest': manifest_sha256(out), 'files': stamps}:
    return True
  try:
    for split in SPLITS:
      verified_split(out, manifest, split)
  except (FileNotFoundError, ValueError) as e:
    log(f'The subset in {out} no longer matches its manifest ({e}); redoing it.')
    return False
  if stamps is not None:
    paths.write_text(out / VERIFIED, json.dumps({'manifest': manifest_sha256(out),
                                                 'files': stamps}))
  return True


def _taking_turns(restructure_fn: Callable[..., dict]) -> Callable[..., dict]:
  """`restructure_fn(source, out, **kwargs)` holding `data.cache.exclusive(out)`; its
  signature and documentation stay `restructure_fn`'s (`functools.wraps`)."""

  @functools.wraps(restructure_fn)
  def locked(source: sources.Source, out: str | os.PathLike, **kwargs) -> dict:
    with cache.exclusive(out):
      return restructure_fn(source, out, **kwargs)

  return locked


def _resplit(name: str, n: int, bad: int, folder: pathlib.Path, images_per_class: int,
             validation_fraction: float, test_per_class: int, seed: int) -> dict:
  """{split: indices into the class's `n` usable files (sorted by name)} (see module doc)."""
  if not images_per_class:  # Every usable image; test_per_class > 0 held out (the last ones).
    images_per_class = n - max(test_per_class, 0)
    n_train = split_sizes(max(images_per_class, 0), validation_fraction)[0]
    if n_train < 1:
      raise ValueError(
          f'class {name!r} ({folder}) has {n} usable images ({bad} skipped as invalid): '
          f'test_per_class={test_per_class} held out and validation_fraction='
          f'{validation_fraction} of the rest leave no training images; lower them or add '
          'images')
    test_per_class = n - images_per_class
  if n < images_per_class:
    raise ValueError(
        f'class {name!r} ({folder}) has {n} usable images '
        f'({bad} skipped as invalid) but images_per_class={images_per_class} was asked for; '
        f'use at most {n}')
  n_val = split_sizes(images_per_class, validation_fraction)[1]
  order = _class_rng(seed, name).permutation(n)
  test_end = n if test_per_class < 0 else images_per_class + test_per_class
  return {'validation': order[:n_val], 'train': order[n_val:images_per_class],
          'test': order[images_per_class:test_end]}


@_taking_turns
def restructure(source: sources.Source, out: str | os.PathLike, *, images_per_class: int,
                validation_fraction: float = 0.1, test_per_class: int = -1, seed: int = 0,
                link_mode: str = 'symlink', overwrite: bool = False,
                log: Callable[[str], None] = print, workers: int | None = None,
                check_cache: str | pathlib.Path | None = 'default',
                splits: str = 'resplit') -> dict:
  """Writes the subset of `source` into `out` (see module doc); returns the manifest.

  Args:
    source: the class-folder tree (`data.sources`); its class names name the output folders.
    out: output folder; created.
    images_per_class: train + validation images per class; 0 = every usable image (less
      test_per_class when > 0).
    validation_fraction: fraction of images_per_class for validation.
    test_per_class: -1 = every remaining usable image into test/, 0 = no test split, else cap.
    seed: choice seed.
    link_mode: 'symlink' (absolute links to the source files) or 'copy'.
    overwrite: replace an existing output made with different arguments (removing only the
      files its manifest lists).
    log: where the report goes.
    workers: validation threads.
    check_cache: validation cache file ('default': under the cache dir; None: no cache).
    splits: 'resplit' (split by the arguments above) or 'folders' (the source's split folders
      as given; images_per_class, validation_fraction, test_per_class, seed ignored).

  Raises:
    ValueError: too few usable images, bad arguments.
    PermissionError: a class folder can't be listed.
    FileExistsError: `out` holds another subset (and not overwrite) or foreign files.

  Processes restructuring the same `out` at once take turns (`data.cache.exclusive`, taken by
  `_taking_turns`): the later ones find the first one's subset.
  """
  if link_mode not in ('symlink', 'copy'):
    raise ValueError(f"link_mode={link_mode!r} is not valid; valid: symlink, copy")
  if splits not in ('resplit', 'folders'):
    raise ValueError(f'splits={splits!r} is not valid; valid: resplit, folders')
  if splits == 'folders' and not source.split_folders:
    raise ValueError(f"splits='folders' needs a source with split folders; {source.description} "
                     'has none')
  n_train = split_sizes(images_per_class, validation_fraction)[0]
  if splits == 'resplit' and (images_per_class < 0 or images_per_class and n_train < 1):
    raise ValueError(f'images_per_class={images_per_class} with validation_fraction='
                     f'{validation_fraction} leaves no training images')
  out = pathlib.Path(out)
  args = arguments(source, images_per_class, validation_fraction, test_per_class, seed, link_mode,
                   splits)
  manifest_path = out / MANIFEST
  if manifest_path.exists():
    old = json.loads(manifest_path.read_text())
    if old.get('args') == args and _intact(out, old, log):
      log(f'Subset already in {out} (same arguments): nothing to do.')
      return old
    if old.get('args') != args and not overwrite:
      raise FileExistsError(
          f'{out} holds a subset made with other arguments ({_changed_keys(old["args"], args)}); '
          'choose another output folder (data.dir / --out) or pass overwrite=True '
          '(--overwrite), which removes only the files it wrote')
    log(f'Removing the previous subset in {out} ({"overwrite" if overwrite else "damaged"}).')
    _remove_written(out, old)
  elif (out / MARKER).exists():
    log(f'{out}: an earlier restructuring was interrupted; redoing it.')
    for split in SPLITS:
      shutil.rmtree(out / split, ignore_errors=True)  # Only ours: the marker says so.
  elif out.exists() and any(out.iterdir()):
    raise FileExistsError(f'{out} is not empty and was not written by data.restructure; '
                          'choose an empty or new output folder')
  out.mkdir(parents=True, exist_ok=True)
  (out / MARKER).write_text(json.dumps(args))

  # List and validate every candidate of every class (of every split folder), once, in
  # parallel. A unit is (split folder or None, class name); its prefix, its folder under root.
  if splits == 'folders':
    prefix = {(sp, n): f'{sp}/{f}' for sp in source.split_folders for n, f in source.classes}
  else:
    prefix = {(None, n): f for n, f in source.classes}
  listed = {}
  for (sp, name), rel_dir in prefix.items():
    d = source.root / rel_dir
    if sp not in (None, 'train') and not d.is_dir():
      listed[sp, name] = ([], [])  # No validation/test images of this class: reported.
      continue
    if not d.is_dir():
      raise FileNotFoundError(f'class {name!r}: folder {d} does not exist')
    listed[sp, name] = _list_class(d)
  candidates = [(unit, rel) for unit, (imgs, _) in listed.items() for rel in imgs]
  checks = imagecheck.check_many([source.root / prefix[u] / r for u, r in candidates],
                                 workers=workers, cache_path=check_cache)
  by_unit: dict[tuple, list[tuple[str, imagecheck.Check]]] = {u: [] for u in prefix}
  skipped, ignored = [], []
  for (unit, rel), chk in zip(candidates, checks):
    if chk.ok:
      by_unit[unit].append((rel, chk))
    else:
      skipped.append({'source': f'{prefix[unit]}/{rel}', 'reason': chk.reason})
  for unit, (_, other) in listed.items():
    ignored += [f'{prefix[unit]}/{rel}' for rel in other]

  # Choose, per class (and split folder).
  chosen: dict[str, list] = {s: [] for s in SPLITS}
  for unit, rel_dir in prefix.items():
    label = [n for n, _ in source.classes].index(unit[1])
    bad = sum(1 for s in skipped if s['source'].startswith(rel_dir + '/'))
    usable = by_unit[unit]  # Sorted by name already.
    if not usable and unit[0] in (None, 'train'):
      raise ValueError(
          f'class {unit[1]!r}: folder {source.root / rel_dir} has no usable images ({bad} '
          f'skipped as invalid, {len(listed[unit][1])} other files ignored; image extensions: '
          f'{", ".join(imagecheck.IMAGE_EXTENSIONS)}); add images or leave the class out')
    if unit[0] is not None:  # A split folder: used as given, in name order.
      chosen[unit[0]] += [(label, unit[1], rel_dir, rel, chk) for rel, chk in usable]
      continue
    parts = _resplit(unit[1], len(usable), bad, source.root / rel_dir, images_per_class,
                     validation_fraction, test_per_class, seed)
    for split, idx in parts.items():
      for i in sorted(idx, key=lambda i: usable[i][0]):
        rel, chk = usable[i]
        chosen[split].append((label, unit[1], rel_dir, rel, chk))

  # Materialise.
  splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
  normalised = []
  for split in SPLITS:
    for label, name, folder, rel, chk in chosen[split]:
      src = source.root / folder / rel
      flat = rel.replace('/', '__')
      if chk.tf_ok:
        dst_rel = f'{split}/{name}/{flat}'
      else:
        dst_rel = f'{split}/{name}/{flat}.png'
      dst = out / dst_rel
      dst.parent.mkdir(parents=True, exist_ok=True)
      if dst.is_symlink() or dst.exists():
        dst.unlink()
      entry = {'path': dst_rel, 'source': f'{folder}/{rel}', 'label': label,
               'size': chk.size, 'sha256': chk.sha256, 'width': chk.width,
               'height': chk.height}
      if not chk.tf_ok:
        imagecheck.normalise(src, dst)
        entry['stored'] = 'normalised'
        entry['stored_sha256'] = paths.file_digest(dst)
        entry['original'] = f'{chk.format} {chk.mode}'
        normalised.append(entry['source'])
      elif link_mode == 'symlink':
        os.symlink(src.resolve(), dst)
        entry['stored'] = 'symlink'
      else:
        shutil.copyfile(src, dst)
        entry['stored'] = 'copy'
      splits[split].append(entry)

  manifest = {
      'format': FORMAT,
      'source': {'kind': source.kind, 'root': str(source.root),
                 'description': source.description, 'is_synthetic': source.is_synthetic},
      'classes': [name for name, _ in source.classes],
      'class_folders': {name: folder for name, folder in source.classes},
      'args': args,
      'num_examples': {s: len(v) for s, v in splits.items()},
      'splits': splits,
      'skipped': skipped,
      'ignored': ignored,
      'normalised': normalised,
  }
  paths.write_text(manifest_path, json.dumps(manifest, indent=1))
  (out / MARKER).unlink(missing_ok=True)
  _report(manifest, out, log)
  return manifest


def _report(manifest: dict, out: pathlib.Path, log: Callable[[str], None]) -> None:
  counts = {s: {} for s in SPLITS}
  for s in SPLITS:
    for e in manifest['splits'][s]:
      name = manifest['classes'][e['label']]
      counts[s][name] = counts[s].get(name, 0) + 1
  log(f'Restructured {manifest["source"]["description"]} into {out}:')
  for s in SPLITS:
    log(f'  {s:10s} {len(manifest["splits"][s]):6d}  '
        + ', '.join(f'{k} {v}' for k, v in counts[s].items()))
    absent = [c for c in manifest['classes'] if c not in counts[s]]
    if counts[s] and absent:
      log(f'  {"":10s} no {s} images of: {", ".join(absent)}')
  for what, items in (('skipped (unusable)', [f'{x["source"]} ({x["reason"]})'
                                              for x in manifest['skipped']]),
                      ('normalised to RGB PNG', manifest['normalised']),
                      ('ignored (not an image extension)', manifest['ignored'])):
    if items:
      shown = '; '.join(items[:20]) + (f'; ... {len(items) - 20} more' if len(items) > 20 else '')
      log(f'  {what}: {len(items)}: {shown}')


def manifest_sha256(root: str | os.PathLike) -> str:
  return paths.file_digest(pathlib.Path(root) / MANIFEST)


def verified_split(root: str | os.PathLike, manifest: dict, split: str, *,
                   workers: int = 8) -> tuple[list[str], list[int]]:
  """(absolute paths, labels) of `split` as `manifest` lists them, each file under `root`
  checked to exist and to hold the bytes the manifest recorded (sha256).

  Raises:
    ValueError: `split` is not in the manifest, or a file's content changed.
    FileNotFoundError: a file is missing or unreadable.
  """
  if split not in manifest['splits']:
    raise ValueError(f'split {split!r} is not in the manifest; it has '
                     f'{", ".join(manifest["splits"])}')
  root = pathlib.Path(root)
  entries = manifest['splits'][split]

  def check(entry: dict) -> Exception | None:
    path = root / entry['path']
    try:
      digest = paths.file_digest(path)
    except OSError as e:
      return FileNotFoundError(f'{path} ({split} file from {entry["source"]}) cannot be read: '
                               f'{e.strerror}; restore the data set the run trained on')
    if digest != entry.get('stored_sha256', entry['sha256']):
      return ValueError(f'{path} ({split} file from {entry["source"]}) changed since the run '
                        'recorded it (sha256 differs): evaluating it would not be the recorded '
                        'split')
    return None

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    problems = [p for p in pool.map(check, entries) if p]
  if problems:
    more = f' ({len(problems) - 1} more such files)' if len(problems) > 1 else ''
    raise type(problems[0])(f'{problems[0]}{more}')
  return [str(root / e['path']) for e in entries], [int(e['label']) for e in entries]


def _source_from_arg(value: str, classes: tuple[str, ...], splits: str = 'resplit'
                     ) -> sources.Source:
  if splits == 'folders':
    return folder.split_folder_source(value, classes)
  if value == 'synthetic':
    from data import config  # pylint: disable=g-import-not-at-top
    from data.sources import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.source(config.get_config().synthetic)
  raw_img = animals10.find_raw_img(value)
  if raw_img is not None:
    return animals10.animals10_source(raw_img, classes or ('dog', 'horse'), 'command line')
  return folder.folder_source(value, classes)


def main(argv: list[str] | None = None) -> int:
  # argparse, not absl: see train.py's docstring.
  p = argparse.ArgumentParser(prog='python -m data.restructure', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--source', required=True, help="Animals-10 folder (holding raw-img/ or "
                 "raw-img itself), any class-folder root, or 'synthetic'")
  p.add_argument('--out', required=True, help='output folder')
  p.add_argument('--classes', default='', help='comma-separated class names (Animals-10: '
                 'English or Italian; default dog,horse there, all folders otherwise)')
  p.add_argument('--splits', choices=('resplit', 'folders'), default='resplit',
                 help="folders: SOURCE/<split>/<class>/* used as given")
  p.add_argument('--images-per-class', type=int, default=500, help='0: every usable image')
  p.add_argument('--validation-fraction', type=float, default=0.1)
  p.add_argument('--test-per-class', type=int, default=-1, help='-1: all the rest; 0: none')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--link-mode', choices=('symlink', 'copy'), default='symlink')
  p.add_argument('--overwrite', action='store_true')
  a = p.parse_args(argv)
  classes = tuple(c for c in a.classes.split(',') if c)
  try:
    src = _source_from_arg(a.source, classes, a.splits)
    restructure(src, a.out, images_per_class=a.images_per_class,
                validation_fraction=a.validation_fraction, test_per_class=a.test_per_class,
                seed=a.seed, link_mode=a.link_mode, overwrite=a.overwrite, splits=a.splits)
  except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
