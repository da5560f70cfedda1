"""The Keras references the tests compare against, and the benchmarks too.

  keras_models   Keras 2 (tf_keras): the seed's compiled model, its backbone, the notebook's
                 augmentation, random BatchNorm statistics, the weight copy both ways (Flax ->
                 Keras and Keras -> Flax, one conv/BatchNorm pairing by creation order; the
                 same pairing and copy serve Keras 3), a with-top model, a run's classifier.
  keras3_models  Keras 3 (`keras`, any backend): the seed's compiled model and its backbone.
  keras_recipe   the seed notebook's recipe in Keras 2 on class-folder trees (the reference of
                 the results), its summary and table.

Imported as `tests.reference.<module>` with the repo root on sys.path: under pytest
(pyproject's `pythonpath = ["."]`) and from the benchmarks (`bench/common.py` puts the root
there). `tests` itself is a namespace package (no __init__.py), so pytest's own import of the
test modules is unchanged. Nothing here imports `bench`: the benchmarks use the references,
never the other way.
"""
