/*
 * Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE in the project root.
 */
package org.flinkextended.flink.ml.pytorch;

import org.apache.flink.table.api.Schema;
import org.apache.flink.table.api.StatementSet;
import org.apache.flink.table.api.Table;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.table.api.internal.TableImpl;

import org.flinkextended.flink.ml.pytorch.bridge.PythonBridge;

import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * DL-on-Flink's Java API: run a Python node entry on {@code worldSize} PyTorch nodes inside a
 * Flink job. The job is built by flink-torch-ml's Python runtime (the same one the Python API
 * uses), reached through a helper Python process this JVM starts and authenticates; the job
 * itself runs when the StatementSet (or the returned table) is executed.
 *
 * <p>The helper's interpreter is, in order: the table environment's {@code
 * python.client.executable}, the environment variable {@code PYFLINK_CLIENT_EXECUTABLE}, {@code
 * python.executable}, then {@code python3}; it must have flink-torch-ml installed.
 */
public final class PyTorchUtils {
    private PyTorchUtils() {}

    /** {@link #train(StatementSet, Table, PyTorchClusterConfig, int)} for one epoch. */
    public static void train(StatementSet statementSet, Table input, PyTorchClusterConfig config) {
        train(statementSet, input, config, 1);
    }

    /**
     * Add to {@code statementSet} a job that runs the config's node entry on {@code worldSize}
     * nodes at the same time, each reading a disjoint shard of {@code input} ({@code epoch} times
     * over), typed as the {@code input_types} property says. It runs at {@code
     * statementSet.execute()}; a failing node fails the job with an error that names its rank and
     * carries its Python traceback.
     *
     * @throws PyTorchException when the job cannot be built (a bad config, columns that do not
     *     match {@code input_types}, an entry that cannot be loaded), with the reason
     */
    public static void train(
            StatementSet statementSet, Table input, PyTorchClusterConfig config, int epoch) {
        Objects.requireNonNull(statementSet, "statementSet");
        Objects.requireNonNull(input, "input");
        Objects.requireNonNull(config, "config");
        if (epoch < 1) {
            throw new IllegalArgumentException("epoch must be at least 1, got " + epoch);
        }
        TableEnvironment tEnv = environmentOf(input);
        PythonBridge.get(tEnv, config).train(tEnv, statementSet, input, config, epoch);
    }

    /**
     * The table of rows the nodes write back to Flink (PyTorchContext's data writer), typed by
     * the {@code output_types} property and named by {@code outputSchema}'s columns. The job runs
     * when the table is executed or inserted, e.g. through {@code statementSet}.
     */
    public static Table inference(
            StatementSet statementSet,
            Table input,
            PyTorchClusterConfig config,
            Schema outputSchema) {
        Objects.requireNonNull(statementSet, "statementSet");
        Objects.requireNonNull(input, "input");
        Objects.requireNonNull(config, "config");
        if (config.getProperty(PyTorchClusterConfig.OUTPUT_TYPES) == null) {
            throw new IllegalArgumentException(
                    "inference needs the 'output_types' property, e.g. "
                            + "setProperty(\"output_types\", \"FLOAT_32,FLOAT_32\")");
        }
        List<String> names = new ArrayList<>();
        if (outputSchema != null) {
            for (Schema.UnresolvedColumn column : outputSchema.getColumns()) {
                names.add(column.getName());
            }
        }
        TableEnvironment tEnv = environmentOf(input);
        return PythonBridge.get(tEnv, config).inference(tEnv, statementSet, input, config, names);
    }

    private static TableEnvironment environmentOf(Table table) {
        if (!(table instanceof TableImpl)) {
            throw new IllegalArgumentException(
                    "input must be a Table of a TableEnvironment, got "
                            + table.getClass().getName());
        }
        return ((TableImpl) table).getTableEnvironment();
    }
}
