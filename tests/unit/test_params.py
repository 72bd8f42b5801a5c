import pytest

from flink_torch_ml import PyTorchModel
from flink_torch_ml.params import IntParam, ParamValidators, StringArrayParam, WithParams


class Thing(WithParams):
    SIZE = IntParam("size", "a size", 3, ParamValidators.gt(0))
    COLS = StringArrayParam("cols", "columns", None)

    def __init__(self, **kwargs):
        self._init_params(**kwargs)


def test_defaults_set_get_and_param_map():
    thing = Thing(cols="a")
    assert thing.get(Thing.SIZE) == 3
    assert thing.get(Thing.COLS) == ("a",)
    thing.set(Thing.SIZE, 5).set(Thing.COLS, ["a", "b"])
    assert {p.name: v for p, v in thing.get_param_map().items()} == {"size": 5, "cols": ("a", "b")}
    assert thing.get_param("size") is Thing.SIZE


def test_wrong_type_is_type_error_and_bad_value_is_value_error():
    with pytest.raises(TypeError, match="size expects int"):
        Thing(size="3")
    with pytest.raises(TypeError, match="size expects int, got bool"):
        Thing(size=True)
    with pytest.raises(ValueError, match="size is given an invalid value 0; expected a value > 0"):
        Thing(size=0)
    with pytest.raises(TypeError, match="list of str"):
        Thing(cols=["a", 1])


def test_unknown_param_suggests_a_name():
    with pytest.raises(TypeError, match="Did you mean 'size'"):
        Thing(sise=1)


def test_json_roundtrip():
    assert Thing.COLS.json_decode(Thing.COLS.json_encode(("a", "b"))) == ("a", "b")


def test_model_no_arg_constructor_and_params():
    model = PyTorchModel()
    params = {p.name: v for p, v in model.get_param_map().items()}
    assert params["prediction_col"] == "prediction"
    assert params["handle_invalid"] == "error"
    assert params["feature_cols"] is None
    with pytest.raises(ValueError, match="handle_invalid"):
        PyTorchModel(handle_invalid="keep")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        PyTorchModel(model="not a module")
