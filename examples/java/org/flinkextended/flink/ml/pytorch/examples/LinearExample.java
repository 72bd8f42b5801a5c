/*
 * Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE in the project root.
 */
package org.flinkextended.flink.ml.pytorch.examples;

import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.DataTypes;
import org.apache.flink.table.api.Schema;
import org.apache.flink.table.api.StatementSet;
import org.apache.flink.table.api.Table;
import org.apache.flink.table.api.TableDescriptor;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;
import org.apache.flink.types.Row;

import org.flinkextended.flink.ml.pytorch.PyTorchClusterConfig;
import org.flinkextended.flink.ml.pytorch.PyTorchUtils;

import java.util.ArrayList;
import java.util.List;

/**
 * DL-on-Flink's Java example: a Flink job written in Java trains a PyTorch model on 2 workers
 * (the node entry is Python: linear_entry.py), then runs inference on 2 workers into Flink's
 * print sink.
 *
 * <p>Arguments: the entry script's path, the file the trained weights go to, and optionally
 * the world size (2) and a rank whose entry should fail (to see how a failure reaches Java).
 */
public class LinearExample {
    public static void main(String[] args) throws Exception {
        String entry = args[0];
        String modelPath = args[1];
        int worldSize = args.length > 2 ? Integer.parseInt(args[2]) : 2;
        String failOnRank = args.length > 3 ? args[3] : "";

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        StreamTableEnvironment tEnv = StreamTableEnvironment.create(env);
        Table source = tEnv.fromValues(
                DataTypes.ROW(
                        DataTypes.FIELD("x", DataTypes.DOUBLE()),
                        DataTypes.FIELD("y", DataTypes.DOUBLE())),
                rows());

        PyTorchClusterConfig trainConfig =
                PyTorchClusterConfig.newBuilder()
                        .setWorldSize(worldSize)
                        .setNodeEntry(entry, "train_entry")
                        .setProperty("input_types", "FLOAT_64,FLOAT_64")
                        .setProperty("model_path", modelPath)
                        .setProperty("fail_on_rank", failOnRank)
                        .build();
        StatementSet training = tEnv.createStatementSet();
        PyTorchUtils.train(training, source, trainConfig);
        training.execute().await();
        System.out.println("trained: " + modelPath);

        PyTorchClusterConfig inferenceConfig =
                PyTorchClusterConfig.newBuilder()
                        .setWorldSize(worldSize)
                        .setNodeEntry(entry, "inference_entry")
                        .setProperty("input_types", "FLOAT_64,FLOAT_64")
                        .setProperty("output_types", "FLOAT_64,FLOAT_64")
                        .setProperty("model_path", modelPath)
                        .build();
        Schema outputSchema =
                Schema.newBuilder()
                        .column("x", DataTypes.DOUBLE())
                        .column("prediction", DataTypes.DOUBLE())
                        .build();
        StatementSet inference = tEnv.createStatementSet();
        Table output = PyTorchUtils.inference(inference, source, inferenceConfig, outputSchema);
        inference.addInsert(TableDescriptor.forConnector("print").build(), output);
        inference.execute().await();
    }

    /** y = 2x + 1 on 1,000 points of [0, 1). */
    static List<Row> rows() {
        List<Row> rows = new ArrayList<>();
        for (int i = 0; i < 1000; i++) {
            double x = i / 1000.0;
            rows.add(Row.of(x, 2 * x + 1));
        }
        return rows;
    }
}
