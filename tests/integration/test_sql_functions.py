"""A saved model as a SQL function with no Python program (flink_torch_ml.sql), created with
Flink's own ``CREATE TEMPORARY FUNCTION ... LANGUAGE PYTHON`` and scored by a SELECT: the
predictions equal ``transform``'s; a bad name or a wrong argument count is a clear error."""

import numpy as np
import pytest
from pyflink.table import DataTypes

import flink_torch_ml.sql as sql
from flink_torch_ml import PyTorchModel
from tests.models import ScalarRegressor


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv(sql.MODELS_VARIABLE, str(tmp_path))
    model = PyTorchModel(ScalarRegressor(), feature_cols=["x1", "x2"], prediction_col="y")
    model.save(str(tmp_path / "regressor"), format="onnx")
    return tmp_path


def points(env, n=200):
    rng = np.random.default_rng(3)
    return env.from_elements([(float(a), float(b)) for a, b in rng.uniform(-1, 1, (n, 2))],
                             DataTypes.ROW([DataTypes.FIELD("x1", DataTypes.DOUBLE()),
                                            DataTypes.FIELD("x2", DataTypes.DOUBLE())]))


def test_create_function_language_python_scores_like_transform(batch_env, models):
    batch_env.create_temporary_view("sql_points", points(batch_env))
    batch_env.execute_sql("CREATE TEMPORARY FUNCTION regress AS "
                          "'flink_torch_ml.sql.regressor' LANGUAGE PYTHON")
    with batch_env.sql_query("SELECT x1, x2, regress(x1, x2) AS y FROM sql_points"
                             ).execute().collect() as rows:
        through_sql = sorted((r[0], r[1], r[2]) for r in rows)
    loaded = PyTorchModel.load(batch_env, str(models / "regressor"))
    with loaded.transform(points(batch_env))[0].execute().collect() as rows:
        through_transform = sorted((r[0], r[1], r[2]) for r in rows)
    assert len(through_sql) == 200
    assert np.allclose(np.array(through_sql), np.array(through_transform), atol=1e-6)
    batch_env.execute_sql("DROP TEMPORARY FUNCTION regress")


def test_a_function_without_a_saved_model_is_an_error_naming_it_and_the_path(batch_env,
                                                                           models):
    batch_env.create_temporary_view("sql_points_2", points(batch_env, 10))
    with pytest.raises(Exception) as error:
        batch_env.execute_sql("CREATE TEMPORARY FUNCTION nothing AS "
                              "'flink_torch_ml.sql.nothing_here' LANGUAGE PYTHON")
        batch_env.sql_query("SELECT nothing(x1, x2) FROM sql_points_2").execute().collect()
    assert "flink_torch_ml.sql.nothing_here" in str(error.value)
    assert str(models / "nothing_here") in str(error.value)


def test_a_wrong_argument_count_is_an_error_naming_the_features(batch_env, models):
    batch_env.create_temporary_view("sql_points_3", points(batch_env, 10))
    batch_env.execute_sql("CREATE TEMPORARY FUNCTION regress_one AS "
                          "'flink_torch_ml.sql.regressor' LANGUAGE PYTHON")
    with pytest.raises(Exception, match=r"scores 2 feature\(s\) \(x1, x2.*called with 1"):
        with batch_env.sql_query("SELECT regress_one(x1) FROM sql_points_3"
                                 ).execute().collect() as rows:
            list(rows)
    batch_env.execute_sql("DROP TEMPORARY FUNCTION regress_one")
