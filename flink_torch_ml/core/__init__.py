"""The Flink-free core (torch, numpy, pyarrow; never pyflink): the training engine
(``engine``, ``online``, ``callbacks``, ``loggers``, ``checkpoint``, ``distributed``), the
row rule and conversions (``rows``, ``types``), and what a model is on disk and at run time
(``spec``, ``export``, ``serialization``, ``runner``). Internal; every other folder builds on
it, and it imports none of them."""
