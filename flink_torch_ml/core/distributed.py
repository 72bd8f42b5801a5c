"""``torch.distributed`` as the library uses it, free of Flink: a run's process-group settings
(scoped to the run), state handed from rank 0 to the others without pickles, and how a
collective's error says that a peer went away.
"""

import contextlib
import datetime
import json
import os
import re
import threading
from typing import Any, Callable, Dict, List, Optional

__all__ = ["run_process_group_settings", "lost_peer", "abort_process_group", "broadcast_state"]

#: what a rank's collective raises when a peer's process or host went away
_LOST_PEER_PATTERNS = (
    r"Connection closed by peer",
    r"Connection reset by peer",
    r"\[gloo\][^\n]*Broken pipe",
)

_patch_lock = threading.Lock()


def lost_peer(text: str) -> bool:
    """True when a rank's error says a peer's connection went away (the peer's process or
    host died); a rank that failed in its own code records its error before that."""
    return any(re.search(pattern, text) for pattern in _LOST_PEER_PATTERNS)


def abort_process_group() -> None:
    """Destroy this process's default group, if any, so peers blocked in a collective with
    this rank fail now instead of at their timeout (best effort, while failing)."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort while failing
            pass


@contextlib.contextmanager
def run_process_group_settings(seconds: float,
                               store_factory: Optional[Callable[[int], object]] = None,
                               master: Optional[Callable[[], Optional[tuple]]] = None):
    """For the duration of one rank's run of a custom entry (``with``), in this worker
    process, ``torch.distributed`` behaves as the run needs; everything is restored on exit:

    - ``init_process_group`` calls without a timeout get the run's (not torch's 30 minutes);
    - a call that would rendezvous through ``env://`` at the address this run handed out
      (``master()``) rendezvouses through the run's authenticated store instead
      (``store_factory(n)``, a fresh prefix per init), so no unauthenticated TCPStore opens;
    - destroying the default group is deferred until the entry has returned: freeing a DDP
      model after its process group was destroyed can deadlock in ProcessGroupGloo's
      destructor, and an entry's locals are freed only after it returns.

    The two functions are replaced on the ``torch.distributed`` module (an entry calls them
    from there), so the settings hold in every thread of this process while the run lasts;
    a Flink Python worker runs one rank at a time, and nesting is refused."""
    import torch.distributed as dist

    if not _patch_lock.acquire(blocking=False):
        raise RuntimeError("Another PyTorch run is active in this process; a Python worker "
                           "runs one rank at a time")
    original_init, original_destroy = dist.init_process_group, dist.destroy_process_group
    deferred: List[bool] = []
    inits = [0]

    def init_process_group(*args, **kwargs):
        if deferred and dist.is_initialized():  # re-init after a deferred destroy
            original_destroy()
            deferred.clear()
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = datetime.timedelta(seconds=seconds)
        if store_factory is not None and _uses_our_master(args, kwargs, master):
            kwargs["store"] = store_factory(inits[0])
            kwargs.pop("init_method", None)
            kwargs.setdefault("rank", int(os.environ["RANK"]) if "RANK" in os.environ else None)
            kwargs.setdefault("world_size", int(os.environ["WORLD_SIZE"])
                              if "WORLD_SIZE" in os.environ else None)
            if kwargs["rank"] is None or kwargs["world_size"] is None:
                raise ValueError("init_process_group needs rank and world_size (pass them, or "
                                 "set RANK and WORLD_SIZE)")
        inits[0] += 1
        return original_init(*args, **kwargs)

    def destroy_process_group(group=None):
        if group is None:
            deferred.append(True)
            return None
        return original_destroy(group)

    dist.init_process_group, dist.destroy_process_group = init_process_group, \
        destroy_process_group
    try:
        yield
    finally:
        dist.init_process_group, dist.destroy_process_group = original_init, original_destroy
        try:
            if dist.is_initialized():  # deferred, or the entry never destroyed it
                original_destroy()
        finally:
            _patch_lock.release()


def _uses_our_master(args, kwargs, master) -> bool:
    """True when an init would rendezvous via ``env://`` at the master this run handed out."""
    if kwargs.get("store") is not None or len(args) > 1:
        return False
    method = kwargs.get("init_method")
    if method not in (None, "env://"):
        return False
    ours = master() if master is not None else None
    if ours is None:
        return False
    return (os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")) == \
        (ours[0], str(ours[1]))


# ---------------------------------------------------------------------- state from rank 0
def broadcast_state(state: Any, rank: int, source: int = 0) -> Any:
    """``state`` (nested dicts, lists and tuples of tensors, numbers, strings, None; what a
    model's and an optimizer's ``state_dict()`` hold) as ``source`` has it, on every rank of
    the default group: its shape travels as JSON, its tensors as tensors. Nothing is
    pickled, so a peer cannot make this rank run code."""
    import torch
    import torch.distributed as dist

    tensors: List[torch.Tensor] = []
    header = _encode(state, tensors) if rank == source else None
    payload = json.dumps(header).encode("utf-8") if rank == source else b""
    size = torch.tensor([len(payload)], dtype=torch.int64)
    dist.broadcast(size, source)
    buffer = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if rank == source \
        else torch.zeros(int(size.item()), dtype=torch.uint8)
    dist.broadcast(buffer, source)
    if rank != source:
        header = json.loads(bytes(buffer.numpy()).decode("utf-8"))
        tensors = [torch.zeros(shape, dtype=getattr(torch, dtype))
                   for shape, dtype in header["tensors"]]
    for tensor in tensors:
        dist.broadcast(tensor, source)
    assert header is not None  # encoded on the source, received on every other rank
    return _decode(header["tree"], tensors)


def _encode(state: Any, tensors: list) -> Dict[str, Any]:
    import torch

    specs = []

    def walk(value):
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            tensors.append(tensor)
            specs.append([list(tensor.shape), str(tensor.dtype).replace("torch.", "")])
            return {"t": len(tensors) - 1}
        if isinstance(value, dict):
            return {"d": [[walk(k), walk(v)] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"l" if isinstance(value, list) else "u": [walk(v) for v in value]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"v": value}
        raise TypeError(f"Cannot hand a {type(value).__name__} to the other ranks")

    tree = walk(state)
    return {"tree": tree, "tensors": specs}


def _decode(node: Dict[str, Any], tensors: list) -> Any:
    if "t" in node:
        return tensors[int(node["t"])]
    if "d" in node:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in node["d"]}
    if "l" in node:
        return [_decode(v, tensors) for v in node["l"]]
    if "u" in node:
        return tuple(_decode(v, tensors) for v in node["u"])
    return node["v"]
