"""inception-flax: a Flax InceptionV3 with ImageNet weights, for Keras-style transfer learning.

    import inception
    clf = inception.load(workdir, checkpoint='best')     # a trained run (inception.tools.classifier)
    clf.predict(images), clf.features(images), clf.class_names, clf.image_size
    inception.features(images, weights='tf2015', endpoint='mixed7')   # pretrained, no run
"""

import importlib

# The API, imported on first use: `import inception.paths` (and every module below) stays
# light, and loading TensorFlow and JAX waits for a call that needs them.
_EXPORTS = {'load': 'inception.tools.classifier', 'features': 'inception.tools.classifier',
            'Classifier': 'inception.tools.classifier',
            'FeatureExtractor': 'inception.tools.classifier'}
__all__ = list(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + __all__)
