"""inception/train/reporting.py's TensorBoard events: written with tf.summary, read back by
TensorBoard's own reader, float32 values, flushed per write, no default writer left behind."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from inception.train import reporting

METRICS = {3: {'accuracy': 0.1, 'loss': np.float64(1 / 3)},
           6: {'accuracy': 0.7, 'loss': np.float32(0.25)}}


def _write(workdir, close=True):
  w = reporting.MetricsWriter(workdir)
  for step, metrics in METRICS.items():
    w.write('validation', step, step // 3, metrics)
  w.write('train', 1, None, {'loss': 2.5})
  if close:
    w.close()
  return w


def _f32(x) -> float:
  return float(np.float32(x))


def test_tensorboard_reads_the_scalars(tmp_path):
  _write(tmp_path)
  assert sorted(p.name for p in (tmp_path / 'tensorboard').iterdir()) == ['train', 'validation']
  files = list((tmp_path / 'tensorboard' / 'validation').iterdir())
  assert len(files) == 1 and files[0].name.startswith('events.out.tfevents.'), files
  acc = event_accumulator.EventAccumulator(str(files[0]),
                                           size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  assert sorted(acc.Tags()['tensors']) == ['accuracy', 'loss']
  for tag in ('accuracy', 'loss'):
    got = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
    assert [s for s, _ in got] == [3, 6]
    for (step, value) in got:
      assert value.dtype == np.float32 and value.shape == ()
      assert float(value) == _f32(METRICS[step][tag])
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == 'scalars'


def test_read_events_round_trips_float32_and_leaves_no_default_writer(tmp_path):
  _write(tmp_path, close=False)  # Flushed per write: readable while the writer is open.
  events = reporting.read_events(next((tmp_path / 'tensorboard' / 'validation').iterdir()))
  assert events == [(s, t, _f32(v)) for s, m in METRICS.items() for t, v in m.items()]
  # No default writer is installed: a summary outside MetricsWriter records nothing.
  assert not bool(tf.summary.scalar('stray', 1.0, step=0))


def test_read_events_reads_simple_value_files(tmp_path):
  """Event files of earlier runs hold `simple_value` scalars (TF protos written directly)."""
  from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'events.out.tfevents.1.host'
  with tf.io.TFRecordWriter(str(path)) as f:
    f.write(event_pb2.Event(wall_time=1.0, file_version='brain.Event:2').SerializeToString())
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag='loss', simple_value=0.1)])
    f.write(event_pb2.Event(wall_time=2.0, step=4, summary=summary).SerializeToString())
  assert reporting.read_events(path) == [(4, 'loss', _f32(0.1))]
