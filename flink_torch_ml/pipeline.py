"""Pipeline and PipelineModel: chain stages (ours or any FlinkML-style stage) into one
Estimator/Model, with save/load. Same semantics as FlinkML's ``pyflink.ml.builder``."""

import importlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from pyflink.table import Table

from .api import Estimator, Model, write_flinkml_metadata
from .errors import ModelFormatError, UntrustedArtifactError

__all__ = ["Pipeline", "PipelineModel", "register_stage_class"]


def _is_estimator(stage) -> bool:
    return callable(getattr(stage, "fit", None))


def _save_stages(stage_list, path: str, kind: str, owner) -> None:
    os.makedirs(path, exist_ok=True)
    entries = []
    for i, stage in enumerate(stage_list):
        stage_path = os.path.join(path, "stages", str(i).zfill(len(str(len(stage_list)))))
        stage.save(stage_path)
        entries.append({"module": type(stage).__module__, "class": type(stage).__name__,
                        "path": os.path.relpath(stage_path, path)})
    with open(os.path.join(path, "pipeline.json"), "w") as f:
        json.dump({"kind": kind, "stages": entries}, f, indent=2)
    write_flinkml_metadata(owner, path, {"num_stages": len(stage_list)})


#: stage classes a saved pipeline may name that load without running code
_SAFE_STAGES = {("flink_torch_ml.model", "PyTorchModel"),
                ("flink_torch_ml.pipeline", "PipelineModel"),
                ("flink_torch_ml.pipeline", "Pipeline")}
#: ... and those that load by unpickling their model and callables (cloudpickle)
_PICKLED_STAGES = {("flink_torch_ml.estimator", "PyTorchEstimator"),
                   ("flink_torch_ml.online", "OnlinePyTorchEstimator")}
#: stage classes of the user's own, registered as safe to load (register_stage_class)
_registered: Dict[Tuple[str, str], type] = {}
_PIPELINE_FILE_LIMIT = 1 << 20


def register_stage_class(cls: type) -> type:
    """Let saved pipelines name ``cls`` (a stage class of your own, whose ``load`` runs no
    code a directory could choose) without ``trusted=True``. Usable as a decorator."""
    if not (isinstance(cls, type) and callable(getattr(cls, "load", None))):
        raise TypeError(f"register_stage_class takes a stage class with a classmethod load, "
                        f"got {cls!r}")
    _registered[(cls.__module__, cls.__name__)] = cls
    return cls


def _read_entries(path: str, kind: str) -> List[Tuple[Tuple[str, str], str]]:
    """``pipeline.json``'s stages as ((module, class), absolute path), checked before
    anything is imported: well-formed, and every stage path inside the directory."""
    meta_path = os.path.join(path, "pipeline.json")
    try:
        if os.path.getsize(meta_path) > _PIPELINE_FILE_LIMIT:
            raise ValueError("larger than 1 MiB")
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ModelFormatError(f"{meta_path!r} is missing: {path!r} is not a saved "
                               f"flink-torch-ml {kind}") from None
    except (OSError, ValueError, RecursionError) as error:
        raise ModelFormatError(f"{meta_path!r} is corrupt: {error}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("stages"), list):
        raise ModelFormatError(f"{meta_path!r} is corrupt: no list of stages")
    if meta.get("kind") != kind:
        raise ModelFormatError(f"{path!r} holds a {meta.get('kind')}, not a {kind}")
    root = os.path.realpath(path)
    entries = []
    for number, entry in enumerate(meta["stages"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str)
                                                  for k in ("module", "class", "path")):
            raise ModelFormatError(f"{meta_path!r} is corrupt: stage {number} needs string "
                                   f"module, class and path")
        stage_path = os.path.realpath(os.path.join(root, entry["path"]))
        if os.path.isabs(entry["path"]) or not stage_path.startswith(root + os.sep):
            raise UntrustedArtifactError(
                f"{meta_path!r}: stage {number}'s path {entry['path']!r} leads outside the "
                f"pipeline's directory; a saved pipeline only loads stages saved inside it")
        entries.append(((entry["module"], entry["class"]), stage_path))
    return entries


def _load_stages(t_env, path: str, kind: str, trusted: bool) -> list:
    """The stages of a saved pipeline. Unless ``trusted``, it runs no code a directory
    could choose: every stage is checked first, and only the library's own model stages (and
    registered classes) load; an estimator stage (cloudpickled) or any other class is
    refused, naming it."""
    entries = _read_entries(path, kind)
    for (module, name), stage_path in entries:
        key = (module, name)
        if trusted or key in _SAFE_STAGES or key in _registered:
            continue
        what = "an estimator, saved with cloudpickle: loading it runs code" \
            if key in _PICKLED_STAGES else \
            "not one of the library's model classes: importing and loading it could run code"
        raise UntrustedArtifactError(
            f"{path!r} names the stage {module}.{name} ({stage_path!r}), {what}. Pass "
            f"trusted=True if you trust this path (or register_stage_class your own class)")
    stages = []
    for (module, name), stage_path in entries:
        cls: Any = _registered.get((module, name)) \
            or getattr(importlib.import_module(module), name)  # a stage class: has load()
        if (module, name) in _SAFE_STAGES:
            # a model stage's TorchScript: signed here, or trusted along with the pipeline
            stages.append(cls.load(t_env, stage_path, trusted=True if trusted else None))
        else:
            stages.append(cls.load(t_env, stage_path))
    return stages


class PipelineModel(Model):
    """An ordered list of models/transformers applied one after another."""

    def __init__(self, stages: Optional[List] = None):
        self._stages = list(stages or [])
        self._init_params()

    def get_stages(self) -> list:
        return list(self._stages)

    def transform(self, *inputs: Table) -> List[Table]:
        for stage in self._stages:
            inputs = stage.transform(*inputs)
        return list(inputs)

    def save(self, path: str) -> None:
        _save_stages(self._stages, path, "PipelineModel", self)

    @classmethod
    def load(cls, t_env, path: str, trusted: bool = False) -> "PipelineModel":
        """Load a saved PipelineModel. It runs no code unless ``trusted=True``: only the
        library's model stages (and registered classes) inside the directory load; see
        ``_load_stages``."""
        return cls(_load_stages(t_env, path, "PipelineModel", trusted))


class Pipeline(Estimator):
    """An ordered list of estimators and transformers; ``fit`` fits each estimator on the
    output of the stages before it and returns a PipelineModel."""

    def __init__(self, stages: Optional[List] = None):
        self._stages = list(stages or [])
        self._init_params()

    def get_stages(self) -> list:
        return list(self._stages)

    def fit(self, *inputs: Table) -> PipelineModel:
        last = max((i for i, s in enumerate(self._stages) if _is_estimator(s)), default=-1)
        fitted = []
        for i, stage in enumerate(self._stages):
            model = stage.fit(*inputs) if _is_estimator(stage) else stage
            fitted.append(model)
            if i < last:
                inputs = model.transform(*inputs)
        return PipelineModel(fitted)

    def save(self, path: str) -> None:
        _save_stages(self._stages, path, "Pipeline", self)

    @classmethod
    def load(cls, t_env, path: str, trusted: bool = False) -> "Pipeline":
        """Load a saved Pipeline. Its estimator stages keep their model and callables with
        cloudpickle, so a pipeline with estimators needs ``trusted=True``."""
        return cls(_load_stages(t_env, path, "Pipeline", trusted))
