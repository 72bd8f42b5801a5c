"""Saved models as Flink SQL functions, with no Python program written by the user.

    CREATE TEMPORARY FUNCTION add_five AS 'flink_torch_ml.sql.add_five' LANGUAGE PYTHON;
    SELECT x, add_five(x) AS y FROM numbers;

The name after ``flink_torch_ml.sql.`` is a directory (written by ``PyTorchModel.save``,
TorchScript or ONNX) under the directory named by the environment variable
``FLINK_TORCH_ML_SQL_MODELS`` of the process that plans the query (the SQL Client, the SQL
Gateway, a Java or Python job's client); Flink's Python function factory runs there and
inherits it. The function is the vectorized pandas UDF of ``PyTorchModel.as_function``: its
arguments are the model's features in order, the model's bytes travel inside the job, and
loading follows ``PyTorchModel.load``'s rules (ONNX, or TorchScript signed with this user's
model key; ``FLINK_TORCH_ML_SQL_TRUSTED=true`` trusts every model under the directory).
"""

import os
from typing import Any, Optional

from .errors import ConfigurationError, ModelFormatError

__all__ = ["MODELS_VARIABLE", "TRUSTED_VARIABLE", "model_function"]

#: the directory holding one saved model per SQL function
MODELS_VARIABLE = "FLINK_TORCH_ML_SQL_MODELS"
#: "true" loads every model under it as trusted (TorchScript from any author: it is code)
TRUSTED_VARIABLE = "FLINK_TORCH_ML_SQL_TRUSTED"


def model_function(name: str, models: Optional[str] = None,
                   trusted: Optional[bool] = None) -> Any:
    """The SQL function ``name``: the model saved at ``<models>/<name>`` as a Flink scalar
    function (``models`` defaults to ``$FLINK_TORCH_ML_SQL_MODELS``). Errors name the
    function and the path: a missing setting, no saved model there, a model that cannot be
    loaded."""
    from .model import PyTorchModel

    root = models or os.environ.get(MODELS_VARIABLE)
    if not root:
        raise ConfigurationError(
            f"SQL function 'flink_torch_ml.sql.{name}': set the environment variable "
            f"{MODELS_VARIABLE} of the process that runs the SQL client (or the job's "
            f"client) to the directory holding your saved models, one directory per "
            f"function (here: {name}/, written by PyTorchModel.save)")
    if not name or name in (os.curdir, os.pardir) or os.sep in name or \
            (os.altsep and os.altsep in name):
        raise ConfigurationError(f"SQL function name {name!r} is not a directory name under "
                                 f"{root}")
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        known = sorted(d for d in os.listdir(root)
                       if os.path.isfile(os.path.join(root, d, "metadata.json"))) \
            if os.path.isdir(root) else []
        raise ModelFormatError(
            f"SQL function 'flink_torch_ml.sql.{name}': no saved model at {path} "
            f"({MODELS_VARIABLE}={root}; models there: {', '.join(known) or 'none'})")
    if trusted is None and os.environ.get(TRUSTED_VARIABLE, "").lower() in ("1", "true", "yes"):
        trusted = True
    try:
        model = PyTorchModel.load(None, path, trusted)
    except Exception as error:
        message = f"SQL function 'flink_torch_ml.sql.{name}' (model {path}): {error}"
        try:
            named = type(error)(message)  # the same exception type, now naming the function
        except Exception:  # noqa: BLE001 - a type that takes other arguments
            named = ModelFormatError(message)
        raise named from error
    return model.as_function()


def __getattr__(name: str) -> Any:
    """``flink_torch_ml.sql.<name>``: what Flink's Python function factory asks for. Private
    and special names (tools probing the module) are plain missing attributes."""
    if name.startswith("_"):
        raise AttributeError(f"module 'flink_torch_ml.sql' has no attribute {name!r}")
    return model_function(name)
