"""inception-flax: a Flax InceptionV3 with ImageNet weights, for Keras-style transfer learning."""
