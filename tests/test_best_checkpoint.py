"""`checkpoint.best_metric`: which validation evaluation the best/ checkpoint keeps."""

import pytest

from inception.train import checkpoints

# Accuracy moves in steps of 1/n on a small validation set: epochs 2-4 tie on accuracy.
EPOCHS = [{'epoch': 1, 'accuracy': 0.96, 'loss': 0.020},
          {'epoch': 2, 'accuracy': 0.98, 'loss': 0.090},
          {'epoch': 3, 'accuracy': 0.98, 'loss': 0.040},
          {'epoch': 4, 'accuracy': 0.98, 'loss': 0.040},
          {'epoch': 5, 'accuracy': 0.97, 'loss': 0.060}]


def test_accuracy_ties_are_broken_by_the_lower_loss_and_complete_ties_keep_the_earlier():
  assert checkpoints.best_of(EPOCHS, 'accuracy_then_loss')['epoch'] == 3


def test_loss_alone():
  assert checkpoints.best_of(EPOCHS, 'loss')['epoch'] == 1


def test_is_better_step_by_step():
  rule = 'accuracy_then_loss'
  assert checkpoints.is_better(EPOCHS[0], None, rule)
  assert checkpoints.is_better(EPOCHS[1], EPOCHS[0], rule)       # higher accuracy, worse loss
  assert checkpoints.is_better(EPOCHS[2], EPOCHS[1], rule)       # same accuracy, lower loss
  assert not checkpoints.is_better(EPOCHS[3], EPOCHS[2], rule)   # complete tie
  assert not checkpoints.is_better(EPOCHS[4], EPOCHS[2], rule)
  assert checkpoints.best_of([], rule) is None


def test_unknown_rule_names_the_key():
  with pytest.raises(ValueError, match=r"checkpoint.best_metric='acc' is not valid; valid: "
                                       r'accuracy_then_loss, loss'):
    checkpoints.is_better(EPOCHS[0], None, 'acc')
