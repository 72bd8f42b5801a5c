/*
 * Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE in the project root.
 */
package org.flinkextended.flink.ml.pytorch;

/**
 * An error of flink-torch-ml's Python runtime, reported to a Java caller: the Python exception's
 * type and message (naming the column, rank or path at fault) and its traceback.
 */
public class PyTorchException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final String pythonType;
    private final String pythonTraceback;

    public PyTorchException(String message) {
        this(message, null, null, null);
    }

    public PyTorchException(String message, Throwable cause) {
        this(message, null, null, cause);
    }

    public PyTorchException(
            String message, String pythonType, String pythonTraceback, Throwable cause) {
        super(pythonTraceback == null ? message : message + "\nPython traceback:\n"
                + pythonTraceback, cause);
        this.pythonType = pythonType;
        this.pythonTraceback = pythonTraceback;
    }

    /** The Python exception's class name (e.g. "SchemaError"), or null for a Java-side error. */
    public String getPythonType() {
        return pythonType;
    }

    /** The Python traceback, or null. */
    public String getPythonTraceback() {
        return pythonTraceback;
    }
}
