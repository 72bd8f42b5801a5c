/*
 * Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE in the project root.
 */
package org.flinkextended.flink.ml.pytorch;

import java.io.File;
import java.io.Serializable;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * What the PyTorch cluster inside a Flink job looks like, as in DL-on-Flink: a world size, a
 * node entry (a Python file and the name of a function in it that takes the node's context) and
 * string properties ({@code input_types}, {@code output_types}, {@code timeout} and the user's
 * own). Build it with {@link #newBuilder()}; {@link Builder#build()} checks it before any job.
 */
public final class PyTorchClusterConfig implements Serializable {
    private static final long serialVersionUID = 1L;

    /** Comma-separated data types of the input table's columns, e.g. "FLOAT_32,FLOAT_32". */
    public static final String INPUT_TYPES = "input_types";
    /** Comma-separated data types of the rows an inference entry writes back to Flink. */
    public static final String OUTPUT_TYPES = "output_types";
    /** Seconds any distributed wait may take (rendezvous, collectives; default 180). */
    public static final String TIMEOUT = "flink_torch_ml.timeout";

    private final int worldSize;
    private final String entryPythonFilePath;
    private final String entryFuncName;
    private final Map<String, String> properties;

    private PyTorchClusterConfig(
            int worldSize,
            String entryPythonFilePath,
            String entryFuncName,
            Map<String, String> properties) {
        this.worldSize = worldSize;
        this.entryPythonFilePath = entryPythonFilePath;
        this.entryFuncName = entryFuncName;
        this.properties = Collections.unmodifiableMap(new LinkedHashMap<>(properties));
    }

    public static Builder newBuilder() {
        return new Builder();
    }

    public int getWorldSize() {
        return worldSize;
    }

    /** The Python file that defines the node entry (an absolute path after {@code build()}). */
    public String getEntryPythonFilePath() {
        return entryPythonFilePath;
    }

    public String getEntryFuncName() {
        return entryFuncName;
    }

    public Map<String, String> getProperties() {
        return properties;
    }

    public String getProperty(String key) {
        return properties.get(key);
    }

    @Override
    public String toString() {
        return "PyTorchClusterConfig{worldSize=" + worldSize + ", nodeEntry="
                + entryPythonFilePath + ":" + entryFuncName + ", properties=" + properties + "}";
    }

    /** Collects the settings; {@link #build()} validates them. */
    public static final class Builder {
        private Integer worldSize;
        private String entryPythonFilePath;
        private String entryFuncName;
        private final Map<String, String> properties = new LinkedHashMap<>();

        private Builder() {}

        /** The number of PyTorch nodes; they run at the same time, one per Flink subtask. */
        public Builder setWorldSize(int worldSize) {
            this.worldSize = worldSize;
            return this;
        }

        /**
         * The node entry: {@code funcName} in the Python file {@code entryPythonFilePath}, a
         * top-level function that takes one argument (the context, see PyTorchContext).
         */
        public Builder setNodeEntry(String entryPythonFilePath, String funcName) {
            this.entryPythonFilePath = entryPythonFilePath;
            this.entryFuncName = funcName;
            return this;
        }

        public Builder setProperty(String key, String value) {
            properties.put(
                    Objects.requireNonNull(key, "property key"),
                    Objects.requireNonNull(value, "value of property " + key));
            return this;
        }

        /** Bound every distributed wait of the run (default 180 s). */
        public Builder setTimeout(double seconds) {
            return setProperty(TIMEOUT, Double.toString(seconds));
        }

        public PyTorchClusterConfig build() {
            if (worldSize == null) {
                throw new IllegalArgumentException(
                        "No world size: call setWorldSize(n) with the number of PyTorch nodes");
            }
            if (worldSize < 1) {
                throw new IllegalArgumentException(
                        "world size must be at least 1, got " + worldSize);
            }
            if (entryPythonFilePath == null || entryFuncName == null) {
                throw new IllegalArgumentException(
                        "No node entry: call setNodeEntry(\"path/to/script.py\", \"function\")");
            }
            if (!entryFuncName.matches("[A-Za-z_][A-Za-z0-9_]*")) {
                throw new IllegalArgumentException(
                        "The node entry function name must be a Python identifier, got '"
                                + entryFuncName + "'");
            }
            File file = new File(entryPythonFilePath);
            if (!file.isFile()) {
                throw new IllegalArgumentException(
                        "The node entry file " + file.getAbsolutePath() + " does not exist");
            }
            String timeout = properties.get(TIMEOUT);
            if (timeout != null) {
                double seconds;
                try {
                    seconds = Double.parseDouble(timeout);
                } catch (NumberFormatException e) {
                    seconds = -1;
                }
                if (!(seconds > 0)) {
                    throw new IllegalArgumentException(
                            TIMEOUT + " must be a number of seconds > 0, got '" + timeout + "'");
                }
            }
            return new PyTorchClusterConfig(
                    worldSize, file.getAbsolutePath(), entryFuncName, properties);
        }
    }
}
