/*
 * Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE in the project root.
 */
package org.flinkextended.flink.ml.pytorch.bridge;

import java.util.List;
import java.util.Map;

/**
 * What the helper Python process (python -m flink_torch_ml.java_bridge) implements for
 * this JVM, through an authenticated py4j callback. Internal: use PyTorchUtils. Each method
 * returns null (train) or the built Table's Java object (inference) on success, else a String
 * "type NUL message NUL traceback".
 */
public interface PythonDriver {
    Object train(
            Object tEnv,
            Object statementSet,
            Object table,
            int worldSize,
            String entryPath,
            String entryFunc,
            Map<String, String> properties,
            int epoch);

    Object inference(
            Object tEnv,
            Object statementSet,
            Object table,
            int worldSize,
            String entryPath,
            String entryFunc,
            Map<String, String> properties,
            List<String> outputNames);

    /** The helper's Python version and flink-torch-ml version, for errors and tests. */
    String describe();
}
