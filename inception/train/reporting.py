"""What a run shows and leaves behind: metrics.jsonl, TensorBoard events, progress bars,
the seed notebook's final table, accuracy/loss curves, the confusion matrix and the
reliability diagram.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from inception import paths


class MetricsWriter:
  """Appends {'step', 'epoch', 'split', ...metrics} lines to <workdir>/metrics.jsonl and writes
  the same scalars as TensorBoard events under <workdir>/tensorboard/<split>. The workdir may be
  a URI (`paths.append_text` then rewrites the object; one writer per workdir: its lock).

  resume_step: the step of the checkpoint a run resumes from. Records with a larger step were
  written by a process that died before its next checkpoint; the resumed run recomputes and
  rewrites them, so they are dropped first (file rewritten atomically). The file then holds
  one record per (split, step), as an uninterrupted run's does. None: append only.
  """

  def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True,
               resume_step: int | None = None):
    self.path = paths.as_path(workdir) / 'metrics.jsonl'
    self.tb_dir = paths.as_path(workdir) / 'tensorboard'
    self._tb = tensorboard
    self._writers: dict[str, Any] = {}
    if self.path.exists():
      self._drop_torn_line()
      if resume_step is not None:
        self._drop_after(int(resume_step))

  def _drop_torn_line(self) -> None:
    # Every record ends with a newline, so text after the last one is a torn write of a killed
    # process; appending to it would glue two records into one bad line.
    blob = self.path.read_bytes()
    if blob and not blob.endswith(b'\n'):
      paths.write_bytes(self.path, blob[:blob.rfind(b'\n') + 1])

  def _drop_after(self, step: int) -> None:
    keep = [r for r in _parse_lines(self.path) if r['step'] <= step]
    paths.write_text(self.path, ''.join(json.dumps(r) + '\n' for r in keep))

  def write(self, split: str, step: int, epoch: int | None, metrics: dict[str, float]) -> None:
    record = {'split': split, 'step': int(step), 'epoch': epoch,
              **{k: float(v) for k, v in metrics.items()}}
    paths.append_text(self.path, json.dumps(record) + '\n')
    if self._tb:
      self._write_tb(split, step, metrics)

  def _write_tb(self, split: str, step: int, metrics: dict[str, float]) -> None:
    """tf.summary scalars (float32), flushed per write so a killed run's events are readable.
    TF's file system writes URIs such as gs:// itself."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # already used by tf.data
    if split not in self._writers:
      self._writers[split] = tf.summary.create_file_writer(str(self.tb_dir / split))
    writer = self._writers[split]
    with writer.as_default():  # Restores the previous default writer (none) on exit.
      for k, v in metrics.items():
        tf.summary.scalar(k, float(v), step=int(step))
    writer.flush()

  def close(self) -> None:
    for w in self._writers.values():
      w.close()
    self._writers.clear()

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_events(path: str | os.PathLike) -> list[tuple[int, str, float]]:
  """(step, tag, value) of the scalars in one event file, in file order, read by TensorBoard's
  own loader (which also turns older `simple_value` scalars into tensors); for tests and quick
  looks."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  # pylint: enable=g-import-not-at-top
  out = []
  for e in event_file_loader.EventFileLoader(os.fspath(path)).Load():
    for v in e.summary.value:
      value = tensor_util.make_ndarray(v.tensor) if v.HasField('tensor') else None
      if value is not None and value.ndim == 0:
        out.append((e.step, v.tag, float(value)))
  return out


def _parse_lines(path: os.PathLike) -> list[dict]:
  """The records of a metrics.jsonl; a torn last line (process killed mid-write) is skipped."""
  lines = [l for l in path.read_text().splitlines() if l.strip()]
  out = []
  for i, line in enumerate(lines):
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      if i != len(lines) - 1:
        raise ValueError(f'{path}, line {i + 1}: not JSON ({line[:80]!r}); the file is '
                         'damaged beyond a torn last line') from None
  return out


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """Records of <workdir>/metrics.jsonl; for a resumed run the last record per (split, step)."""
  path = paths.as_path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  by_key: dict[tuple, dict] = {}
  for r in _parse_lines(path):
    by_key[(r['split'], r['step'])] = r
  return sorted(by_key.values(), key=lambda r: (r['step'], r['split']))


def epoch_history(records: Sequence[dict]) -> dict[str, dict[int, dict]]:
  """{'train'|'validation': {epoch: record}} from the per-epoch records ('train_epoch', ...)."""
  out: dict[str, dict[int, dict]] = {'train': {}, 'validation': {}}
  for r in records:
    if r['split'] == 'train_epoch':
      out['train'][r['epoch']] = r
    elif r['split'] == 'validation':
      out['validation'][r['epoch']] = r
  return out


def seed_table(history: dict[str, dict[int, dict]]) -> str:
  """The seed notebook's summary: training/validation accuracy and loss at the last epoch."""
  if not history['train']:
    return '(no completed epoch)'
  last = max(history['train'])
  tr = history['train'][last]
  va = history['validation'].get(last, {})
  fmt = lambda x: '   n/a' if x is None else f'{x:.4f}'
  lines = [f'Epoch {last}', '             accuracy    loss',
           f'training       {fmt(tr.get("accuracy"))}   {fmt(tr.get("loss"))}',
           f'validation     {fmt(va.get("accuracy"))}   {fmt(va.get("loss"))}']
  return '\n'.join(lines)


def plot_history(history: dict[str, dict[int, dict]], path: str | os.PathLike,
                 title: str = '') -> None:
  """PNG with accuracy and loss per epoch, training vs validation (the notebook's plots)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top,unused-import
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ('accuracy', 'loss')):
    for split, style in (('train', 'o-'), ('validation', 's--')):
      ep = sorted(history[split])
      ax.plot(ep, [history[split][e][key] for e in ep], style,
              label=f'{"Training" if split == "train" else "Validation"} {key}')
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(key)
    ax.set_title(f'Training and validation {key}')
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    import textwrap  # pylint: disable=g-import-not-at-top
    fig.suptitle(textwrap.shorten(title, 120), fontsize=10)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=100)
  plt.close(fig)


def save_confusion(confusion: np.ndarray, class_names: Sequence[str], stem: str | os.PathLike,
                   title: str = '') -> dict:
  """Writes <stem>.json and <stem>.png; rows are true classes, columns predicted classes."""
  confusion = np.asarray(confusion, np.int64)
  total = int(confusion.sum())
  result = {'class_names': list(class_names), 'matrix': confusion.tolist(),
            'accuracy': float(np.trace(confusion) / total) if total else math.nan,
            'count': total}
  paths.write_text(f'{os.fspath(stem)}.json', json.dumps(result, indent=2) + '\n')
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  k = len(class_names)
  fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
  ax.imshow(confusion, cmap='Blues')
  for i in range(k):
    for j in range(k):
      ax.text(j, i, str(confusion[i, j]), ha='center', va='center',
              color='white' if confusion[i, j] > confusion.max() / 2 else 'black')
  ax.set_xticks(range(k), class_names, rotation=45 if k > 3 else 0)
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title or f'Confusion matrix (accuracy {result["accuracy"]:.4f}, n={total})')
  fig.tight_layout()
  paths.save_figure(fig, f'{os.fspath(stem)}.png', dpi=100)
  plt.close(fig)
  return result


def save_reliability(report_or_reliability: dict, stem: str | os.PathLike,
                     title: str = '') -> None:
  """Writes <stem>.png: a reliability diagram of a `metrics.report` (or of its 'reliability'
  dict): accuracy per top-label confidence bin as bars against the diagonal, the gap to the
  bin's mean confidence hatched, ECE in the title, example counts per bin below."""
  rel = report_or_reliability.get('reliability', report_or_reliability)
  edges = np.asarray(rel['bin_edges'], np.float64)
  counts = np.asarray(rel['count'], np.int64)
  full = counts > 0  # Empty bins have None for their means: drawn as nothing.
  acc = np.array([a if a is not None else 0.0 for a in rel['accuracy']], np.float64)
  conf = np.array([c if c is not None else 0.0 for c in rel['confidence']], np.float64)
  total = int(counts.sum())
  ece = report_or_reliability.get('ece')
  if ece is None:  # A bare reliability dict: the same sum as `metrics.calibration`'s.
    ece = float((counts * np.abs(acc - conf)).sum() / total) if total else math.nan
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax, axn) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                gridspec_kw={'height_ratios': (3, 1)})
  left, width = edges[:-1][full], np.diff(edges)[full]
  ax.bar(left, acc[full], width, align='edge', color='tab:blue', edgecolor='navy',
         label='accuracy')
  ax.bar(left, np.abs(acc - conf)[full], width, bottom=np.minimum(acc, conf)[full],
         align='edge', color='tab:red', alpha=0.3, edgecolor='tab:red', hatch='//',
         label='gap to mean confidence')
  ax.plot([0, 1], [0, 1], '--', color='gray', label='perfect calibration')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel('accuracy')
  ax.grid(alpha=0.3)
  ax.legend(loc='upper left', fontsize=9)
  stats = f'ECE {ece:.4f}, n={total}, {len(counts)} bins'
  ax.set_title(f'{title}\n{stats}' if title else f'Reliability ({stats})', fontsize=10)
  axn.bar(edges[:-1], counts, np.diff(edges), align='edge', color='gray', edgecolor='black')
  for x, w, n in zip(edges[:-1][full], np.diff(edges)[full], counts[full]):
    axn.text(x + w / 2, n, str(n), ha='center', va='bottom', fontsize=7)
  axn.set_ylim(0, max(1, counts.max()) * 1.25)  # Room for the count labels.
  axn.set_xlabel('top-label confidence')
  axn.set_ylabel('examples')
  fig.tight_layout()
  paths.save_figure(fig, f'{os.fspath(stem)}.png', dpi=100)
  plt.close(fig)


def progress(total: int, desc: str, disable: bool = False):
  """A tqdm bar (to stderr) for one epoch."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, unit='step', leave=True, dynamic_ncols=True,
              disable=disable)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  paths.write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n')
