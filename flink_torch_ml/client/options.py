"""The library's configuration keys: Flink options (set in ``config.yaml``, with ``-D`` or
``t_env.get_config().set(...)``), each with a ``FLINK_TORCH_ML_*`` environment variable,
and how a value is looked up: explicit setting, then the Flink option, then the
environment, then the default."""

import os
from typing import Optional

__all__ = ["TIMEOUT", "MAX_FAILURES", "CHECKPOINT_DIR", "RENDEZVOUS_HOST", "RENDEZVOUS_BIND",
           "MAX_FRAME_BYTES", "SSL_CERTIFICATE", "SSL_KEY", "lookup", "env_name"]

#: seconds any distributed wait may take (a ``PyTorchClusterConfig`` property)
TIMEOUT = "flink_torch_ml.timeout"
#: new attempts of a failed run (a ``PyTorchClusterConfig`` property)
MAX_FAILURES = "flink_torch_ml.max-failures"
#: where a custom entry keeps its checkpoints (a ``PyTorchClusterConfig`` property)
CHECKPOINT_DIR = "flink_torch_ml.checkpoint-dir"
#: address the workers dial to reach the client's rendezvous store
RENDEZVOUS_HOST = "flink_torch_ml.rendezvous.host"
#: address the rendezvous store binds (default: loopback on the embedded mini-cluster,
#: all interfaces elsewhere)
RENDEZVOUS_BIND = "flink_torch_ml.rendezvous.bind"
#: largest frame (bytes) any connection of the library accepts before closing it
MAX_FRAME_BYTES = "flink_torch_ml.max-frame-bytes"
#: PEM certificate and private key: TLS on the store and the feed (read by the client,
#: shipped inside the job)
SSL_CERTIFICATE = "flink_torch_ml.ssl.certificate"
SSL_KEY = "flink_torch_ml.ssl.key"


def env_name(option: str) -> str:
    """The environment variable of an option, e.g. FLINK_TORCH_ML_RENDEZVOUS_HOST."""
    return option.upper().replace(".", "_").replace("-", "_")


def lookup(option: str, config=None, explicit: Optional[str] = None) -> Optional[str]:
    """An option's value: ``explicit`` if given, else the Flink ``config``'s, else the
    environment's; None when unset (empty strings count as unset)."""
    for value in (explicit,
                  config.get(option, None) if config is not None else None,
                  os.environ.get(env_name(option))):
        if value not in (None, ""):
            return str(value)
    return None
