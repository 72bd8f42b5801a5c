"""The Flink side that runs inside Flink's Python workers: the functions a job carries
(``operators``: the feed and the node; ``predict``: the scoring UDF; ``follow``: scoring that
follows a model stream; ``online_trainer``: an online rank), one rank's run of an entry
(``node``, ``shard``, ``context``, ``estimator_entry``), and the process's guards and metrics
(``orphan_guard``, ``metrics``). Internal; it imports the core and the data plane, never the
client side or the public API."""
