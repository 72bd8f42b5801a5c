"""The data plane, Flink-free: the library's authenticated sockets and what crosses them
(``wire``: handshake and frames; ``store``: the rendezvous store; ``rendezvous``: its address
and the run's secret; ``protocol``: every key of a run and the one bounded wait; ``feed``:
input batches into the workers; ``columns``: columns as Arrow IPC). Internal; imports only
the core."""
