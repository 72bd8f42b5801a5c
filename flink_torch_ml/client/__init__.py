"""The Flink side that runs in the client process (the one that calls ``fit``, ``train``,
``transform``): it defines and submits jobs (``job``, ``online_job``, ``scoring_job``), runs
a distributed fit or online fit (``run``, ``fit``, ``online_fit``) and reads its failures
(``failures``), shows progress (``progress``), knows the library's options (``options``),
the Flink schema side of the type table (``schema``) and works around planner thread bugs
(``planner``). Internal; it imports the core, the data plane and the worker functions its
jobs carry, never the public API."""
