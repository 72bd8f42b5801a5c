"""Training checkpoints on disk (checkpoint.py): atomic, checksummed, pruned, never unpickled,
and a newest checkpoint that is partial or corrupt falls back to the one before."""

import hashlib
import json
import os
import pickle

import pytest
import torch
from torch import nn

from flink_torch_ml import CheckpointError
from flink_torch_ml.core.checkpoint import (check_compatible, ensure_writable,
                                               find_checkpoints, load_checkpoint_state,
                                               newest_checkpoint, parameter_shapes,
                                               write_checkpoint)


def write(directory, epoch, keep=3, model=None):
    model = model or nn.Linear(3, 2)
    return write_checkpoint(str(directory), epoch, {"model": model.state_dict(), "epoch": epoch},
                            {"history": [{"epoch": e} for e in range(1, epoch + 1)],
                             "model_params": parameter_shapes(model)}, keep)


def test_newest_is_found_and_older_ones_are_pruned(tmp_path):
    for epoch in range(1, 6):
        write(tmp_path, epoch, keep=2)
    assert [c.epoch for c in find_checkpoints(str(tmp_path))] == [5, 4]
    assert sorted(os.listdir(tmp_path)) == ["epoch-000004.json", "epoch-000004.pt",
                                            "epoch-000005.json", "epoch-000005.pt"]
    checkpoint, skipped = newest_checkpoint(str(tmp_path))
    assert checkpoint.epoch == 5 and skipped == []
    assert checkpoint.metadata["history"][-1] == {"epoch": 5}
    assert load_checkpoint_state(checkpoint)["epoch"] == 5


def test_a_corrupt_or_partial_newest_checkpoint_falls_back(tmp_path):
    for epoch in (1, 2, 3):
        write(tmp_path, epoch)
    with open(tmp_path / "epoch-000003.pt", "r+b") as f:  # corrupt the newest
        f.seek(10)
        f.write(b"\x00\xff\x00\xff")
    os.unlink(tmp_path / "epoch-000002.pt")  # a partial one: metadata without state
    checkpoint, skipped = newest_checkpoint(str(tmp_path))
    assert checkpoint.epoch == 1
    assert "epoch 3" in skipped[0] and "sha256" in skipped[0]
    assert "epoch 2" in skipped[1] and "unreadable" in skipped[1]
    # a state file whose metadata was never written (a crash between the two) is invisible
    (tmp_path / "epoch-000009.pt").write_bytes(b"half-written")
    assert newest_checkpoint(str(tmp_path))[0].epoch == 1


def test_loading_never_unpickles_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    write(tmp_path, 1)
    payload = pickle.dumps({"model": Exploit()})
    (tmp_path / "epoch-000001.pt").write_bytes(payload)
    metadata = json.loads((tmp_path / "epoch-000001.json").read_text())
    metadata["sha256"] = hashlib.sha256(payload).hexdigest()  # even with a matching checksum
    (tmp_path / "epoch-000001.json").write_text(json.dumps(metadata))
    checkpoint, _ = newest_checkpoint(str(tmp_path))
    with pytest.raises(Exception):
        load_checkpoint_state(checkpoint)
    assert not marker.exists()


def test_another_models_checkpoint_is_refused_naming_the_difference(tmp_path):
    checkpoint = write(tmp_path, 1, model=nn.Linear(3, 2))
    check_compatible(checkpoint, nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match=r"shapes differ: .*weight: checkpoint \[2, 3\] vs "
                                              r"model \[4, 3\]"):
        check_compatible(checkpoint, nn.Linear(3, 4))
    with pytest.raises(CheckpointError, match="parameters the checkpoint lacks: "
                                              r"\['0.bias', '0.weight'\]"):
        check_compatible(checkpoint, nn.Sequential(nn.Linear(3, 2)))


def test_an_unwritable_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="checkpoint_dir .*file/sub.* cannot be written"):
        ensure_writable(str(blocker / "sub"))
    ensure_writable(str(tmp_path / "new" / "dir"))
    assert (tmp_path / "new" / "dir").is_dir()


def test_writes_are_atomic_no_temporary_files_left(tmp_path):
    write(tmp_path, 1)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    state = load_checkpoint_state(newest_checkpoint(str(tmp_path))[0])
    assert isinstance(state["model"]["weight"], torch.Tensor)
