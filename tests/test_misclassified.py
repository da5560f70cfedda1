"""The misclassified-images report: which rows count as errors, and the files it writes."""

import numpy as np
from PIL import Image

from inception.tools import misclassified


def _rows(split_dir, items):
  return [{'path': str(split_dir / true / name), 'class': pred, 'probability': p}
          for true, name, pred, p in items]


def test_find_keeps_only_errors_most_confident_first(tmp_path):
  split_dir = tmp_path / 'test'
  rows = _rows(split_dir, [('dog', 'a.jpg', 'dog', 0.99), ('dog', 'b.jpg', 'horse', 0.6),
                           ('horse', 'c.jpg', 'dog', 0.9), ('horse', 'd.jpg', 'horse', 0.7)])
  errors = misclassified.find(rows, split_dir)
  assert [(e['true'], e['predicted'], e['probability']) for e in errors] == [
      ('horse', 'dog', 0.9), ('dog', 'horse', 0.6)]
  assert errors[0]['path'].endswith('horse/c.jpg')


def test_contact_sheet_writes_a_png_with_at_most_max_images(tmp_path):
  rng = np.random.default_rng(0)
  errors = []
  for i in range(5):
    path = tmp_path / f'{i}.png'
    Image.fromarray(rng.integers(0, 255, (40 + i, 60, 3), dtype=np.uint8)).save(path)
    errors.append({'path': str(path), 'true': 'dog', 'predicted': 'horse', 'probability': 0.8})
  out = tmp_path / 'sheet.png'
  misclassified.contact_sheet(errors, out, max_images=3, columns=2)
  with Image.open(out) as im:
    assert im.size[0] > 100 and im.size[1] > 100
  misclassified.contact_sheet([], tmp_path / 'empty.png')  # No errors: still a valid file.
  assert (tmp_path / 'empty.png').stat().st_size > 0
