/*
 * Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE in the project root.
 */
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.DataTypes;
import org.apache.flink.table.api.StatementSet;
import org.apache.flink.table.api.Table;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;
import org.apache.flink.types.Row;

import org.flinkextended.flink.ml.pytorch.PyTorchClusterConfig;
import org.flinkextended.flink.ml.pytorch.PyTorchException;
import org.flinkextended.flink.ml.pytorch.PyTorchUtils;

/** A world size above the local environment's slots: PyTorchUtils.train must refuse it. */
public class SlotsCheck {
    public static void main(String[] args) {
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        StreamTableEnvironment tEnv = StreamTableEnvironment.create(env);
        tEnv.getConfig().set("taskmanager.numberOfTaskSlots", "1");
        Table source = tEnv.fromValues(
                DataTypes.ROW(DataTypes.FIELD("x", DataTypes.DOUBLE())), Row.of(1.0), Row.of(2.0));
        PyTorchClusterConfig config = PyTorchClusterConfig.newBuilder()
                .setWorldSize(2)
                .setNodeEntry(args[0], "train_entry")
                .setProperty("input_types", "FLOAT_64")
                .build();
        StatementSet statementSet = tEnv.createStatementSet();
        try {
            PyTorchUtils.train(statementSet, source, config);
            System.out.println("NOT REFUSED");
        } catch (PyTorchException e) {
            System.out.println("REFUSED " + e.getPythonType() + ": " + e.getMessage());
        }
        System.exit(0);
    }
}
