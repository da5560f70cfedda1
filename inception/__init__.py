"""inception-flax: a Flax InceptionV3 with ImageNet weights, for Keras-style transfer learning.

    import inception
    clf = inception.load(workdir, checkpoint='best')     # a trained run (inception.tools.classifier)
    clf.predict(images), clf.features(images), clf.class_names, clf.image_size
    inception.features(images, weights='tf2015', endpoint='mixed7')   # pretrained, no run
"""

from inception import lazy

# The API, imported on first use: `import inception.paths` (and every module below) stays
# light, and loading TensorFlow and JAX waits for a call that needs them.
_EXPORTS = {'load': 'inception.tools.classifier', 'features': 'inception.tools.classifier',
            'Classifier': 'inception.tools.classifier',
            'FeatureExtractor': 'inception.tools.classifier'}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy.exports(__name__, _EXPORTS, globals())
