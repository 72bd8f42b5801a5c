-- A saved PyTorch model as a SQL function, with no Python program: Flink's SQL Client scores
-- a table with the model saved at $FLINK_TORCH_ML_SQL_MODELS/regressor (PyTorchModel.save,
-- ONNX or TorchScript; its features are x1 and x2). Run it on the standalone cluster:
--
--   FLINK_TORCH_ML_SQL_MODELS=/path/to/models scripts/flink-cluster.sh sql examples/sql/score_points.sql
--
-- (tests/integration/test_cluster.py runs it and checks every prediction against
-- PyTorchModel.transform.)

SET 'sql-client.execution.result-mode' = 'tableau';

CREATE TEMPORARY TABLE points (
    x1 DOUBLE,
    x2 DOUBLE
) WITH (
    'connector' = 'datagen',
    'number-of-rows' = '50',
    'fields.x1.min' = '-1', 'fields.x1.max' = '1',
    'fields.x2.min' = '-1', 'fields.x2.max' = '1'
);

CREATE TEMPORARY FUNCTION regress AS 'flink_torch_ml.sql.regressor' LANGUAGE PYTHON;

SELECT x1, x2, regress(x1, x2) AS y FROM points;
