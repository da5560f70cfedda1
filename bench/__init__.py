"""Benchmarks, run as scripts (`python bench/<name>.py`, `make bench`; see bench/README.md).

A package too, so that tests import the Keras reference side as modules
(`from bench import keras_recipe`, which runs on `bench/keras_models.py`). The scripts share
one bootstrap, `bench/common.py` (repo root on sys.path, CPU name, timing helpers).
"""
