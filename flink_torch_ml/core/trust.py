"""What loading a saved artifact may run, decided before anything is loaded.

- **ONNX** runs no code in onnxruntime, except one thing: a model may name *external data*
  files, which onnxruntime then reads from disk. :func:`check_onnx` refuses such a model (and
  anything that is no ONNX model) before onnxruntime sees it.
- **TorchScript** is code (``torch.jit.load`` runs a module's ``__setstate__``, ``forward``
  may read and write files). A model directory this library writes is signed with this
  user's *model key* (HMAC-SHA256 over its metadata, which holds the model file's sha256);
  loading runs TorchScript only from a directory signed with that key, or when the caller
  says it trusts the path (``trusted=True``). Anyone who can change the files but cannot
  read the key cannot make a signed directory; ``trusted=False`` (safe mode) never loads
  TorchScript.

The key is a file of 32 random bytes, readable by its owner only:
``$FLINK_TORCH_ML_MODEL_KEY`` if set, else ``$XDG_CONFIG_HOME/flink-torch-ml/model.key``
(``~/.config/...``). It is made when first needed; where it cannot be, directories are
saved unsigned (loading their TorchScript then needs ``trusted=True``). Free of Flink.
"""

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from typing import Any, Dict, Optional

from ..errors import ModelFormatError, UntrustedArtifactError

__all__ = ["model_key_path", "sign_metadata", "signed_here", "check_torchscript_allowed",
           "check_onnx"]

log = logging.getLogger("flink_torch_ml")
_KEY_BYTES = 32
_key_lock = threading.Lock()


def model_key_path() -> str:
    """Where this user's model key is (see the module's docstring)."""
    explicit = os.environ.get("FLINK_TORCH_ML_MODEL_KEY")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return os.path.join(base, "flink-torch-ml", "model.key")


def _model_key(create: bool) -> Optional[bytes]:
    path = model_key_path()
    with _key_lock:
        for _ in range(50):
            try:
                with open(path, "rb") as f:
                    key = f.read()
                if len(key) >= _KEY_BYTES:
                    return key
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:  # another process is writing it: read it next
                    time.sleep(0.02)
                    continue
                except OSError as error:
                    log.warning("flink-torch-ml: cannot create the model key %s (%s); models "
                                "are saved unsigned", path, error)
                    return None
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(_KEY_BYTES))
                continue
            except OSError as error:
                log.warning("flink-torch-ml: cannot read the model key %s (%s)", path, error)
                return None
            time.sleep(0.02)  # being written by another process
        return None


def _digest(key: bytes, metadata: Dict[str, Any]) -> str:
    unsigned = {k: v for k, v in metadata.items() if k != "signature"}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hmac.new(key, b"flink-torch-ml model v1\n" + text.encode("utf-8"),
                    hashlib.sha256).hexdigest()


def sign_metadata(metadata: Dict[str, Any]) -> Optional[str]:
    """The signature of a model directory's metadata with this user's key (made if need
    be), or None where there is no key."""
    key = _model_key(create=True)
    return _digest(key, metadata) if key is not None else None


def signed_here(metadata: Dict[str, Any]) -> bool:
    """True when the metadata carries a valid signature of this user's key."""
    signature = metadata.get("signature")
    if not isinstance(signature, str):
        return False
    key = _model_key(create=False)
    return key is not None and hmac.compare_digest(signature, _digest(key, metadata))


def check_torchscript_allowed(metadata: Dict[str, Any], where: str,
                              trusted: Optional[bool]) -> None:
    """Raise UntrustedArtifactError unless a TorchScript model may be loaded from ``where``:
    ``trusted=True``, or ``trusted=None`` and a directory this user's key signed."""
    if trusted is True:
        return
    if trusted is False:
        raise UntrustedArtifactError(
            f"{where!r} holds a TorchScript model, which is code; safe loading "
            f"(trusted=False) reads ONNX models only. Save the model as ONNX, or pass "
            f"trusted=True if you trust this path")
    if not signed_here(metadata):
        raise UntrustedArtifactError(
            f"{where!r} holds a TorchScript model (which is code) that this user's model key "
            f"({model_key_path()}) did not sign: it was saved on another machine or by another "
            f"user, by an older flink-torch-ml, or changed since. Pass trusted=True if you "
            f"trust this path, or save the model as ONNX")


def check_onnx(model_bytes: bytes, where: str) -> None:
    """Raise UntrustedArtifactError for an ONNX model that names external data (files
    onnxruntime would read), ModelFormatError for bytes that are no ONNX model."""
    import onnx

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as error:  # noqa: BLE001 - protobuf's errors vary by version
        raise ModelFormatError(f"{where} is not an ONNX model: {error}") from None
    external = [t.name for t in _tensors(model.graph)
                if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data)]
    if external:
        raise UntrustedArtifactError(
            f"{where} keeps tensor(s) {', '.join(map(repr, external[:5]))} in external data "
            f"files, which onnxruntime would read from the worker's disk; save the model "
            f"with its weights inside (the library's own ONNX export does)")


def _tensors(graph):
    """Every tensor of a graph and its subgraphs (initializers and attribute values)."""
    for tensor in graph.initializer:
        yield tensor
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)
