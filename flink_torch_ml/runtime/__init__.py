"""The distributed runtime: everything that makes a training or inference run of W PyTorch
workers inside a Flink job. Internal; its modules follow the process they run in:

- client process: ``driver`` (the run), ``job`` (its Flink job definition), ``rendezvous``
  and ``store`` (the authenticated store the client hosts), ``progress``, ``failures``;
- Flink's Python workers: ``operators`` (the Flink functions), ``feed`` (input batches into
  the workers), ``worker`` (one rank's run), ``shard``, ``columns``, ``context``,
  ``training`` and ``estimator_entry`` (the estimator's loop), ``orphan_guard``;
- both: ``protocol`` (every store key and the bounded wait), ``wire`` (authenticated
  framed connections), ``job_spec``, ``options``.

Nothing here imports the public API modules; it uses only ``errors``, ``data_types`` and
``_defaults`` from the package root.
"""
