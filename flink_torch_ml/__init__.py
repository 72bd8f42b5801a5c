"""flink-torch-ml: train PyTorch models inside Apache Flink jobs and score Flink tables with them.

Importing the package changes nothing outside it and imports none of its modules.
"""

# Names resolve on first use (PEP 562), so importing the package imports none of its modules.
# Flink starts the Python functions of a job in concurrent threads of one worker process, each
# unpickling its function (which imports the module defining it); a package __init__ that
# imported its submodules would hold the package's import lock while waiting for a
# submodule's, and deadlock with a thread importing that submodule (Python raises
# _DeadlockError in the worker).
_EXPORTS = {
    "__version__": "._version",
    "pytorch_utils": None,
    "callbacks": None,
    "training": None,
    "sql": None,
    "PyTorchClusterConfig": ".cluster_config",
    "PyTorchContext": ".context",
    "DataType": ".data_types",
    "ModelMapFunction": ".datastream",
    "score_data_stream": ".datastream",
    "create_table_environment": ".environment",
    "PyTorchEstimator": ".estimator",
    "OnlinePyTorchEstimator": ".online",
    "PyTorchModel": ".model",
    "register_model_function": ".model",
    "register_stage_class": ".pipeline",
    "Pipeline": ".pipeline",
    "PipelineModel": ".pipeline",
    "prepare_planner": ".client.planner",
    "Callback": ".callbacks",
    "EarlyStopping": ".callbacks",
    "LRScheduler": ".callbacks",
    "ModelCheckpoint": ".callbacks",
    "MLflowLogger": ".callbacks",
    "TensorBoardLogger": ".callbacks",
    "TrainingLoop": ".training",
    **{name: ".errors" for name in (
        "AuthenticationError", "CheckpointError", "ChecksumMismatchError", "ConfigurationError",
        "FeedError",
        "FlinkTorchMLError", "FrameError", "InvalidDataError", "ModelExportError",
        "ModelFormatError", "NotFittedError", "ProtocolError", "RendezvousError",
        "RendezvousTimeoutError", "SchemaError", "TaskManagerLostError",
        "UnsupportedTypeError", "UntrustedArtifactError", "WorkerError", "WorkerLostError")},
}


def __getattr__(name: str):
    import importlib

    if name not in _EXPORTS:
        raise AttributeError(f"module 'flink_torch_ml' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:  # a public submodule
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "__version__",
    "DataType",
    "PyTorchModel",
    "register_model_function",
    "score_data_stream",
    "ModelMapFunction",
    "PyTorchEstimator",
    "OnlinePyTorchEstimator",
    "TrainingLoop",
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "LRScheduler",
    "TensorBoardLogger",
    "MLflowLogger",
    "Pipeline",
    "PipelineModel",
    "register_stage_class",
    "create_table_environment",
    "prepare_planner",
    "pytorch_utils",
    "callbacks",
    "training",
    "sql",
    "PyTorchClusterConfig",
    "PyTorchContext",
    "WorkerError",
    "TaskManagerLostError",
    "WorkerLostError",
    "CheckpointError",
    "FeedError",
    "RendezvousError",
    "RendezvousTimeoutError",
    "ProtocolError",
    "FrameError",
    "AuthenticationError",
    "FlinkTorchMLError",
    "ConfigurationError",
    "SchemaError",
    "UnsupportedTypeError",
    "UntrustedArtifactError",
    "InvalidDataError",
    "ModelFormatError",
    "ChecksumMismatchError",
    "ModelExportError",
    "NotFittedError",
]
