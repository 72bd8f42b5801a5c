"""Parameters in the style of FlinkML: typed ``Param`` constants, validators and ``WithParams``.

The interface matches ``pyflink.ml.param`` (``set``/``get``/``get_param_map``/``get_param``),
so our stages work with FlinkML code; values are stored as JSON, never as pickles.
"""

import json
from typing import Any, Callable, Dict, Generic, List, Optional, Sequence, TypeVar, cast

from ._defaults import TIMEOUT as _TIMEOUT

T = TypeVar("T")
_W = TypeVar("_W", bound="WithParams")

__all__ = ["Param", "ParamValidator", "ParamValidators", "WithParams", "IntParam", "FloatParam",
           "BooleanParam", "StringParam", "StringArrayParam", "IntArrayParam", "ObjectParam",
           "HasFeatureCols", "HasLabelCol", "HasPredictionCol", "HasHandleInvalid",
           "HasMaxEpochs", "HasBatchSize", "HasSeed", "HasWorkerNum", "HasNumThreads",
           "HasTimeout"]


class ParamValidator(Generic[T]):
    """A predicate on a parameter value, with a human-readable description of what it expects."""

    def __init__(self, check: Callable[[Any], bool], expects: str):
        self._check = check
        self.expects = expects

    def validate(self, value: Any) -> bool:
        try:
            return bool(self._check(value))
        except TypeError:
            return False


class ParamValidators:
    """Factories for the common validators (the same names as FlinkML's)."""

    @staticmethod
    def always_true() -> ParamValidator:
        return ParamValidator(lambda v: True, "any value")

    @staticmethod
    def not_null() -> ParamValidator:
        return ParamValidator(lambda v: v is not None, "a value (not None)")

    @staticmethod
    def gt(bound: float) -> ParamValidator:
        return ParamValidator(lambda v: v is not None and v > bound, f"a value > {bound}")

    @staticmethod
    def gt_eq(bound: float) -> ParamValidator:
        return ParamValidator(lambda v: v is not None and v >= bound, f"a value >= {bound}")

    @staticmethod
    def in_range(low: float, high: float, low_inclusive: bool = True,
                 high_inclusive: bool = True) -> ParamValidator:
        def check(v):
            return (v is not None and low <= v <= high and (low_inclusive or v != low)
                    and (high_inclusive or v != high))
        brackets = ("[" if low_inclusive else "(") + f"{low}, {high}" + (
            "]" if high_inclusive else ")")
        return ParamValidator(check, f"a value in {brackets}")

    @staticmethod
    def in_array(allowed: Sequence[Any]) -> ParamValidator:
        return ParamValidator(lambda v: v in allowed, f"one of {list(allowed)}")

    @staticmethod
    def non_empty_array() -> ParamValidator:
        return ParamValidator(lambda v: v is not None and len(v) > 0, "a non-empty list")

    @staticmethod
    def optional(inner: ParamValidator) -> ParamValidator:
        return ParamValidator(lambda v: v is None or inner.validate(v), f"None or {inner.expects}")


class Param(Generic[T]):
    """A parameter definition: name, value type, description, default and validator."""

    def __init__(self, name: str, type_: type, type_name: str, description: str,
                 default_value: Optional[T], validator: Optional[ParamValidator] = None):
        self.name = name
        self.type = type_
        self.type_name = type_name
        self.description = description
        self.default_value = default_value
        self.validator = validator or ParamValidators.always_true()
        if default_value is not None and not self.validator.validate(default_value):
            raise ValueError(f"Parameter {name} has an invalid default {default_value!r}")

    def convert(self, value: Any) -> Any:
        """Normalize a user value (e.g. a list to a tuple); raise TypeError on a wrong type."""
        if value is None or isinstance(value, self.type):
            return value
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"Parameter {self.name} expects {self.type_name}, got "
                        f"{type(value).__name__} {value!r}")

    def json_encode(self, value: T) -> str:
        return json.dumps(value)

    def json_decode(self, text: str) -> T:
        value = json.loads(text)
        return cast(T, tuple(value) if isinstance(value, list) else value)  # JSON lists: tuples

    def __eq__(self, other):
        return isinstance(other, Param) and self.name == other.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"Param({self.name!r})"

    def __str__(self) -> str:  # FlinkML prints params by name
        return self.name


class BooleanParam(Param[bool]):
    def __init__(self, name, description, default_value, validator=None):
        super().__init__(name, bool, "bool", description, default_value, validator)


class IntParam(Param[int]):
    def __init__(self, name, description, default_value, validator=None):
        super().__init__(name, int, "int", description, default_value, validator)

    def convert(self, value):
        if isinstance(value, bool):
            raise TypeError(f"Parameter {self.name} expects int, got bool {value!r}")
        return super().convert(value)


class FloatParam(Param[float]):
    def __init__(self, name, description, default_value, validator=None):
        super().__init__(name, float, "float", description, default_value, validator)


class StringParam(Param[str]):
    def __init__(self, name, description, default_value, validator=None):
        super().__init__(name, str, "str", description, default_value, validator)


class _ArrayParam(Param[tuple]):
    """A tuple of items of one type; a list is accepted and a lone item too if allowed."""

    item_type: type = object
    accept_scalar = False

    def __init__(self, name, description, default_value, validator=None):
        super().__init__(name, tuple, f"Tuple[{self.item_type.__name__}]", description,
                         default_value, validator)

    def convert(self, value):
        if value is None:
            return None
        if isinstance(value, self.item_type) and self.accept_scalar:
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"Parameter {self.name} expects a list of "
                            f"{self.item_type.__name__}, got {type(value).__name__} {value!r}")
        for item in value:
            if not isinstance(item, self.item_type) or isinstance(item, bool):
                raise TypeError(f"Parameter {self.name} expects a list of "
                                f"{self.item_type.__name__}, got item {item!r}")
        return tuple(value)


class StringArrayParam(_ArrayParam):
    item_type = str
    accept_scalar = True


class IntArrayParam(_ArrayParam):
    item_type = int


class ObjectParam(Param[Any]):
    """A Python object (a module, a callable); saved with cloudpickle, never as JSON."""

    def __init__(self, name, description, default_value=None, validator=None):
        super().__init__(name, object, "object", description, default_value, validator)

    def json_encode(self, value):
        raise TypeError(f"Parameter {self.name} holds a Python object and is not JSON-encodable")


class WithParams:
    """Mixin holding parameter values; params are the ``Param`` class attributes of a class."""

    def _init_params(self, **values: Any) -> None:
        self._param_map: Dict[Param, Any] = {p: p.default_value for p in self._declared_params()}
        for name, value in values.items():
            self.set(self._param_by_name(name), value)

    @classmethod
    def _declared_params(cls) -> List[Param]:
        seen = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                if isinstance(value, Param):
                    seen[value.name] = value
        return list(seen.values())

    def _param_by_name(self, name: str) -> Param:
        param = self.get_param(name)
        if param is None:
            import difflib
            names = [p.name for p in self._declared_params()]
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{type(self).__name__} has no parameter {name!r}.{hint} "
                            f"Parameters: {', '.join(names)}")
        return param

    def _reject_unknown(self, names: Dict[str, Any]) -> None:
        """A constructor's unknown keyword arguments as the TypeError Python would raise,
        with a suggestion for a misspelt parameter."""
        for name in names:
            self._param_by_name(name)

    def get_param_map(self) -> Dict[Param, Any]:
        if not hasattr(self, "_param_map"):
            self._init_params()
        return self._param_map

    def get_param(self, name: str) -> Optional[Param]:
        for param in self.get_param_map():
            if param.name == name:
                return param
        return None

    def set(self: _W, param: Param, value: Any) -> _W:
        value = param.convert(value)
        if not param.validator.validate(value):
            raise ValueError(f"Parameter {param.name} is given an invalid value {value!r}; "
                             f"expected {param.validator.expects}")
        self.get_param_map()[param] = value
        return self

    def get(self, param: Param) -> Any:
        return self.get_param_map().get(param, param.default_value)


# ---------------------------------------------------------------------- shared params
# Mixins in FlinkML's style: one Param constant and its accessors, shared by the stages
# that take it (the estimator and the model it fits read the same names).

def _cols(cols) -> list:
    """``set_x_cols("a", "b")`` and ``set_x_cols(["a", "b"])`` mean the same."""
    if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
        return list(cols[0])
    return list(cols)


class HasFeatureCols(WithParams):
    FEATURE_COLS = StringArrayParam("feature_cols", "Feature columns, in forward() order.", None)

    def get_feature_cols(self) -> Optional[tuple]:
        return self.get(self.FEATURE_COLS)

    def set_feature_cols(self, *cols: str):
        return self.set(self.FEATURE_COLS, _cols(cols))


class HasLabelCol(WithParams):
    LABEL_COL = StringParam("label_col", "The label column.", None)

    def get_label_col(self) -> Optional[str]:
        return self.get(self.LABEL_COL)

    def set_label_col(self, col: str):
        return self.set(self.LABEL_COL, col)


class HasPredictionCol(WithParams):
    PREDICTION_COL = StringParam("prediction_col", "Name of the prediction column.",
                                 "prediction", ParamValidators.not_null())

    def get_prediction_col(self) -> str:
        return self.get(self.PREDICTION_COL)

    def set_prediction_col(self, col: str):
        return self.set(self.PREDICTION_COL, col)


class HasHandleInvalid(WithParams):
    HANDLE_INVALID = StringParam(
        "handle_invalid", "What to do with a row whose feature is NULL, NaN or a wrong-length "
        "array: 'error' (fail, naming the column) or 'skip' (drop and count it).", "error",
        ParamValidators.in_array(["error", "skip"]))

    def get_handle_invalid(self) -> str:
        return self.get(self.HANDLE_INVALID)

    def set_handle_invalid(self, value: str):
        return self.set(self.HANDLE_INVALID, value)


class HasMaxEpochs(WithParams):
    MAX_EPOCHS = IntParam("max_epochs", "Passes over the table.", 1, ParamValidators.gt(0))

    def get_max_epochs(self) -> int:
        return self.get(self.MAX_EPOCHS)

    def set_max_epochs(self, value: int):
        return self.set(self.MAX_EPOCHS, value)


class HasBatchSize(WithParams):
    BATCH_SIZE = IntParam("batch_size", "Rows per batch, per worker.", 32,
                          ParamValidators.gt(0))

    def get_batch_size(self) -> int:
        return self.get(self.BATCH_SIZE)

    def set_batch_size(self, value: int):
        return self.set(self.BATCH_SIZE, value)


class HasSeed(WithParams):
    SEED = IntParam("seed", "Seed for weights' init order, shuffling and validation split.", 0)

    def get_seed(self) -> int:
        return self.get(self.SEED)

    def set_seed(self, value: int):
        return self.set(self.SEED, value)


class HasWorkerNum(WithParams):
    WORKER_NUM = IntParam("worker_num", "Number of DDP workers (Flink subtasks).", 1,
                          ParamValidators.gt(0))

    def get_worker_num(self) -> int:
        return self.get(self.WORKER_NUM)

    def set_worker_num(self, value: int):
        return self.set(self.WORKER_NUM, value)


class HasNumThreads(WithParams):
    NUM_THREADS = IntParam("num_threads", "Threads per worker (0: cores / parallelism).", 0,
                           ParamValidators.gt_eq(0))

    def get_num_threads(self) -> int:
        return self.get(self.NUM_THREADS)

    def set_num_threads(self, value: int):
        return self.set(self.NUM_THREADS, value)


class HasTimeout(WithParams):
    TIMEOUT = FloatParam("timeout", "Seconds any distributed wait may take.", _TIMEOUT,
                         ParamValidators.gt(0))

    def get_timeout(self) -> float:
        return self.get(self.TIMEOUT)

    def set_timeout(self, value: float):
        return self.set(self.TIMEOUT, value)
