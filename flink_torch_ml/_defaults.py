"""Every default the library uses in more than one place, in one place."""

#: seconds any distributed wait may take (rendezvous, feed, collectives, the final barrier)
TIMEOUT = 180.0
#: rows per Arrow batch and per bundle of the jobs' Python UDFs when Flink's options are unset
#: (PyFlink's default is 1,000; the training feed ships one batch per frame)
ARROW_BATCH_ROWS = 10_000
#: max parallelism pinned for training jobs, so that shard keys map to subtasks as computed
MAX_PARALLELISM = 128
#: seconds a failing rank waits for a peer's earlier error, to report the root cause
PEER_ERROR_GRACE = 3.0
#: seconds the client waits for a worker's own report after a Python worker process crashed
CRASH_REPORT_GRACE = 2.0
#: seconds a worker stays busy after its run failed elsewhere before it ends its process
ORPHANED_WORKER_GRACE = 10.0
#: seconds after its deployment deadline the client cancels a run whose workers never all
#: started (later than the workers' own bounded waits, whose errors say more)
DEPLOYMENT_GRACE = 5.0
#: how often bounded waits poll the rendezvous store
POLL_INTERVAL = 0.02
#: milliseconds between an online-training rank's heartbeat syncs: an idle or slower rank
#: never keeps the others waiting longer than this
ONLINE_HEARTBEAT_MS = 1000
#: milliseconds of Flink's Python bundle time an online fit sets when it is unset (a version
#: row reaches Flink at the end of its bundle)
ONLINE_BUNDLE_TIME_MS = 100
