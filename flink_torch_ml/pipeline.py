"""Pipeline and PipelineModel: chain stages (ours or any FlinkML-style stage) into one
Estimator/Model, with save/load. Same semantics as FlinkML's ``pyflink.ml.builder``."""

import importlib
import json
import os
from typing import List

from pyflink.table import Table

from .api import Estimator, Model, write_flinkml_metadata

__all__ = ["Pipeline", "PipelineModel"]


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


def _load_stages(t_env, path: str, kind: str) -> list:
    with open(os.path.join(path, "pipeline.json")) as f:
        meta = json.load(f)
    if meta.get("kind") != kind:
        raise ValueError(f"{path!r} holds a {meta.get('kind')}, not a {kind}")
    stages = []
    for entry in meta["stages"]:
        cls = getattr(importlib.import_module(entry["module"]), entry["class"])
        stages.append(cls.load(t_env, os.path.join(path, entry["path"])))
    return stages


class PipelineModel(Model):
    """An ordered list of models/transformers applied one after another."""

    def __init__(self, stages: List = None):
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
    def load(cls, t_env, path: str) -> "PipelineModel":
        return cls(_load_stages(t_env, path, "PipelineModel"))


class Pipeline(Estimator):
    """An ordered list of estimators and transformers; ``fit`` fits each estimator on the
    output of the stages before it and returns a PipelineModel."""

    def __init__(self, stages: List = None):
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
    def load(cls, t_env, path: str) -> "Pipeline":
        return cls(_load_stages(t_env, path, "Pipeline"))
