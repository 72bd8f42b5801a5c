"""Scoring: running a saved model on Flink's Arrow batches. Internal; ``spec`` (what a model
reads and writes), ``export`` (torch module -> TorchScript/ONNX bytes), ``serialization``
(the model directory), ``runner`` (loads the bytes once per worker, predicts on numpy
batches), ``batch`` (pandas columns <-> arrays) and ``udf`` (the vectorized pandas UDF,
which runs inside Flink's Python workers).

Nothing here imports the public API modules; it uses only ``errors``, ``data_types`` and
``_defaults`` from the package root.
"""
