"""The on-disk model format: a directory holding ``metadata.json`` and one model file.

Loading reads JSON and TorchScript/ONNX bytes only; nothing is ever unpickled. The model file's
sha256 is recorded in the metadata and checked on load, so a truncated or swapped file is an
error instead of silently different predictions; the metadata is signed with this user's
model key, and what a directory may hold before it is loaded is decided in ``trust.py``
(ONNX: no external data; TorchScript, which is code: signed here, or the caller trusts it).
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .._version import __version__
from ..errors import ChecksumMismatchError, ModelFormatError
from .export import FORMATS
from .spec import ModelSpec
from .trust import check_onnx, check_torchscript_allowed, sign_metadata

__all__ = ["METADATA_FILE", "METADATA_VERSION", "SavedModel", "write_model_dir",
           "read_model_dir", "write_flinkml_metadata", "MODEL_STAGE"]

METADATA_FILE = "metadata.json"
METADATA_VERSION = 1
MODEL_FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
#: the stage FlinkML's loader rebuilds from a saved model directory
MODEL_STAGE = ("flink_torch_ml.model", "PyTorchModel")


@dataclass
class SavedModel:
    """The contents of a model directory."""

    model_format: str
    model_bytes: bytes
    spec: ModelSpec
    metadata: Dict[str, Any]


def write_model_dir(path: str, model_format: str, model_bytes: bytes, spec: ModelSpec,
                    extra: Optional[Dict[str, Any]] = None, overwrite: bool = False) -> None:
    """Write the model file, its metadata and FlinkML's ``metadata`` file; refuse to
    overwrite an existing model."""
    if model_format not in FORMATS:
        raise ModelFormatError(f"Unknown model format {model_format!r}; use one of {FORMATS}")
    metadata_path = os.path.join(path, METADATA_FILE)
    if os.path.exists(metadata_path) and not overwrite:
        raise FileExistsError(f"A model is already saved at {path!r}; choose another path or "
                              f"pass overwrite=True")
    os.makedirs(path, exist_ok=True)
    file_name = MODEL_FILES[model_format]
    with open(os.path.join(path, file_name), "wb") as f:
        f.write(model_bytes)
    import torch
    metadata = {
        "metadata_version": METADATA_VERSION,
        "library": "flink-torch-ml",
        "library_version": __version__,
        "format": model_format,
        "model_file": file_name,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "torch_version": torch.__version__,
        "onnx_version": _onnx_version() if model_format == "onnx" else None,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **spec.to_json(),
        **(extra or {}),
    }
    signature = sign_metadata(metadata)
    if signature is not None:
        metadata["signature"] = signature
    with open(metadata_path, "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    write_flinkml_metadata(path, *MODEL_STAGE)


def write_flinkml_metadata(path: str, module_name: str, class_name: str,
                           extra: Optional[Dict[str, Any]] = None) -> None:
    """Write the ``metadata`` file FlinkML's own loader reads (a pickled dict naming the
    stage's module and class; FlinkML then calls ``cls.load(t_env, path)``), so FlinkML
    pipelines can reload our stages. Our own loaders never read it."""
    import pickle

    metadata = {"module_name": module_name, "class_name": class_name,
                "timestamp": time.time(), "param_map": {}, **(extra or {})}
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metadata"), "wb") as f:
        pickle.dump(metadata, f, protocol=4)


def read_model_dir(path: str, trusted: Optional[bool] = None) -> SavedModel:
    """Read and verify a model directory written by :func:`write_model_dir`: its files, its
    checksum, and that it may be loaded (``trust.py``: ONNX without external data; TorchScript
    signed by this user's key, or ``trusted=True``; never with ``trusted=False``)."""
    metadata_path = os.path.join(path, METADATA_FILE)
    if not os.path.isdir(path):
        raise ModelFormatError(f"No model directory at {path!r}")
    if not os.path.isfile(metadata_path):
        raise ModelFormatError(f"{metadata_path!r} is missing: {path!r} is not a saved "
                               f"flink-torch-ml model")
    try:
        with open(metadata_path) as f:
            metadata = json.load(f)
        if not isinstance(metadata, dict):
            raise ValueError("the top level is not a JSON object")
    except ValueError as error:
        raise ModelFormatError(f"{metadata_path!r} is corrupt (not valid JSON metadata): "
                               f"{error}") from None
    version = metadata.get("metadata_version")
    if not isinstance(version, int):
        raise ModelFormatError(f"{metadata_path!r} has no integer 'metadata_version'")
    if version > METADATA_VERSION:
        raise ModelFormatError(
            f"{metadata_path!r} has metadata version {version}, newer than this "
            f"flink-torch-ml {__version__} reads ({METADATA_VERSION}); upgrade flink-torch-ml")
    model_format = metadata.get("format")
    if model_format not in FORMATS:
        raise ModelFormatError(f"{metadata_path!r} names unknown model format "
                               f"{model_format!r}; known formats: {', '.join(FORMATS)}")
    try:
        spec = ModelSpec.from_json(metadata)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFormatError(f"{metadata_path!r} is corrupt: bad or missing field "
                               f"{error}") from None
    model_path = os.path.join(path, os.path.basename(str(metadata.get("model_file",
                                                                      MODEL_FILES[model_format]))))
    if not os.path.isfile(model_path):
        raise ModelFormatError(f"Model file {model_path!r} named by the metadata is missing")
    with open(model_path, "rb") as f:
        model_bytes = f.read()
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != metadata.get("sha256"):
        raise ChecksumMismatchError(
            f"Model file {model_path!r} has sha256 {digest}, but the metadata records "
            f"{metadata.get('sha256')}: the file is corrupt or was replaced")
    if model_format == "onnx":
        check_onnx(model_bytes, f"Model file {model_path!r}")
    else:
        check_torchscript_allowed(metadata, path, trusted)
    return SavedModel(model_format, model_bytes, spec, metadata)


def _onnx_version() -> Optional[str]:
    try:
        import onnx
        return onnx.__version__
    except ImportError:
        return None
