"""Training checkpoints on disk: what a resumed fit needs to continue exactly where it stopped.

A checkpoint after epoch k is two files in the checkpoint directory:
- ``epoch-00000k.pt``: ``torch.save`` of the model's, the optimizer's and the LR scheduler's
  state dicts, read back with ``torch.load(weights_only=True)`` (tensors and plain
  containers only: loading never runs code);
- ``epoch-00000k.json``: the epoch, the history so far, the callbacks' state, the model's
  parameter names and shapes, and the sha256 of the ``.pt`` file.
Each file is written to a temporary name, flushed and renamed; the JSON goes last, so a
checkpoint exists only once both are complete. Reading skips (with a warning) a newest
checkpoint that is partial or whose checksum does not match, and uses the one before.
Free of Flink imports.
"""

import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import CheckpointError

__all__ = ["Checkpoint", "write_checkpoint", "find_checkpoints", "newest_checkpoint",
           "verified_checkpoint", "parameter_shapes",
           "load_checkpoint_state", "ensure_writable", "check_compatible", "FORMAT"]

FORMAT = 1
_NAME = re.compile(r"^epoch-(\d{6})\.json$")


@dataclass
class Checkpoint:
    """A checkpoint's metadata (the JSON file) and where its state file is."""

    directory: str
    epoch: int  # epochs completed
    metadata: Dict[str, Any]

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, f"epoch-{self.epoch:06d}.pt")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.directory, f"epoch-{self.epoch:06d}.json")


def _atomic_write(path: str, data: bytes) -> None:
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def ensure_writable(directory: str) -> None:
    """Create ``directory`` if needed and prove a file can be written there, or raise a
    CheckpointError naming it (called before submission)."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)
    except OSError as error:
        raise CheckpointError(f"checkpoint_dir {directory!r} cannot be written: {error}. "
                              f"Choose a directory this process (and, on a cluster, every "
                              f"TaskManager) can write") from None


def write_checkpoint(directory: str, epoch: int, state: Dict[str, Any],
                     metadata: Dict[str, Any], keep: int) -> Checkpoint:
    """Write the checkpoint after ``epoch`` epochs; keep only the newest ``keep``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    checkpoint = Checkpoint(directory, epoch, dict(
        metadata, format=FORMAT, epoch=epoch, sha256=hashlib.sha256(payload).hexdigest(),
        state_bytes=len(payload), written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                           time.gmtime())))
    os.makedirs(directory, exist_ok=True)
    _atomic_write(checkpoint.state_path, payload)
    _atomic_write(checkpoint.metadata_path,
                  json.dumps(checkpoint.metadata, indent=1, sort_keys=True).encode())
    for old in find_checkpoints(directory)[keep:]:
        for path in (old.metadata_path, old.state_path):
            try:
                os.unlink(path)
            except OSError:
                pass
    return checkpoint


def find_checkpoints(directory: str) -> List[Checkpoint]:
    """Every checkpoint whose metadata file exists, newest first (not yet verified)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        match = _NAME.match(name)
        if match:
            found.append(Checkpoint(directory, int(match.group(1)), {}))
    return sorted(found, key=lambda c: c.epoch, reverse=True)


def _verified(checkpoint: Checkpoint) -> Tuple[Optional[Checkpoint], Optional[str]]:
    """The checkpoint with its metadata if it is complete and intact, else why not."""
    try:
        with open(checkpoint.metadata_path, "rb") as f:
            metadata = json.loads(f.read().decode("utf-8"))
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            return None, "unknown format"
        with open(checkpoint.state_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except (OSError, ValueError) as error:
        return None, f"unreadable ({error})"
    if digest != metadata.get("sha256"):
        return None, "its state file does not match the recorded sha256"
    return Checkpoint(checkpoint.directory, checkpoint.epoch, metadata), None


def verified_checkpoint(directory: str, epoch: int) -> Optional[Checkpoint]:
    """The checkpoint after ``epoch`` in ``directory`` if it is intact, else None."""
    return _verified(Checkpoint(directory, epoch, {}))[0]


def newest_checkpoint(directory: str) -> Tuple[Optional[Checkpoint], List[str]]:
    """The newest intact checkpoint in ``directory`` (or None), and a warning for each newer
    one that was skipped."""
    warnings: List[str] = []
    for candidate in find_checkpoints(directory):
        checkpoint, problem = _verified(candidate)
        if checkpoint is not None:
            return checkpoint, warnings
        warnings.append(f"skipped the checkpoint after epoch {candidate.epoch} in "
                        f"{directory!r}: {problem}")
    return None, warnings


def load_checkpoint_state(checkpoint: Checkpoint) -> Dict[str, Any]:
    """The state dicts of a verified checkpoint (tensors and plain containers only)."""
    with open(checkpoint.state_path, "rb") as f:
        payload = f.read()
    if hashlib.sha256(payload).hexdigest() != checkpoint.metadata.get("sha256"):
        raise CheckpointError(f"Checkpoint {checkpoint.state_path!r} changed after it was "
                              f"verified")
    return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")


def parameter_shapes(model: torch.nn.Module) -> Dict[str, List[int]]:
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def check_compatible(checkpoint: Checkpoint, model: torch.nn.Module) -> None:
    """Raise a CheckpointError naming the differences when the checkpoint holds another
    model (parameter names or shapes)."""
    saved = checkpoint.metadata.get("model_params") or {}
    current = parameter_shapes(model)
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = [f"{n}: checkpoint {saved[n]} vs model {current[n]}"
              for n in sorted(set(saved) & set(current)) if list(saved[n]) != current[n]]
    if missing or unexpected or shapes:
        parts = ([f"parameters the checkpoint lacks: {missing[:5]}"] if missing else []) + \
            ([f"parameters the model lacks: {unexpected[:5]}"] if unexpected else []) + \
            ([f"shapes differ: {'; '.join(shapes[:5])}"] if shapes else [])
        raise CheckpointError(f"The checkpoint {checkpoint.metadata_path!r} holds another "
                              f"model: {'; '.join(parts)}")
