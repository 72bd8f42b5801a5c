/*
 * Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE in the project root.
 */
package org.flinkextended.flink.ml.pytorch.bridge;

import org.apache.flink.api.python.shaded.py4j.GatewayServer;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.table.api.StatementSet;
import org.apache.flink.table.api.Table;
import org.apache.flink.table.api.TableEnvironment;

import org.flinkextended.flink.ml.pytorch.PyTorchClusterConfig;
import org.flinkextended.flink.ml.pytorch.PyTorchException;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * The helper Python process that builds flink-torch-ml jobs for this JVM: started once per JVM
 * (on first use) with a py4j gateway bound to loopback that accepts only connections presenting
 * a random token, which reaches the helper on its stdin (never on a command line, in the
 * environment or in any Flink configuration). The helper hosts the runs' rendezvous stores, so
 * it lives as long as this JVM; a shutdown hook stops it. Internal: use PyTorchUtils.
 */
public final class PythonBridge {
    /** The entry-point key the helper registers its driver under. */
    static final String DRIVER_KEY = "flink_torch_ml.driver";
    /** Environment variable the helper reads the gateway's port from. */
    static final String PORT_VARIABLE = "FLINK_TORCH_ML_GATEWAY_PORT";
    /** Seconds to wait for the helper to start (it imports PyFlink and torch). */
    static final String START_TIMEOUT_VARIABLE = "FLINK_TORCH_ML_BRIDGE_TIMEOUT";

    private static PythonBridge instance;

    private final GatewayServer server;
    private final Process process;
    private final PythonDriver driver;
    private final String executable;

    private PythonBridge(
            GatewayServer server, Process process, PythonDriver driver, String executable) {
        this.server = server;
        this.process = process;
        this.driver = driver;
        this.executable = executable;
    }

    /** The JVM's helper, started on first use (again if it died). */
    public static synchronized PythonBridge get(
            TableEnvironment tEnv, PyTorchClusterConfig config) {
        if (instance != null && instance.process.isAlive()) {
            return instance;
        }
        if (instance != null) {
            instance.close();
            instance = null;
        }
        instance = start(pythonExecutable(tEnv));
        PythonBridge started = instance;
        Runtime.getRuntime()
                .addShutdownHook(new Thread(started::close, "flink-torch-ml-bridge-stop"));
        return started;
    }

    public void train(
            TableEnvironment tEnv,
            StatementSet statementSet,
            Table input,
            PyTorchClusterConfig config,
            int epoch) {
        Object result;
        try {
            result =
                    driver.train(
                            tEnv,
                            statementSet,
                            input,
                            config.getWorldSize(),
                            config.getEntryPythonFilePath(),
                            config.getEntryFuncName(),
                            new HashMap<>(config.getProperties()),
                            epoch);
        } catch (RuntimeException e) {
            throw lost(e);
        }
        if (result != null) {
            throw error(result);
        }
    }

    public Table inference(
            TableEnvironment tEnv,
            StatementSet statementSet,
            Table input,
            PyTorchClusterConfig config,
            List<String> outputNames) {
        Object result;
        try {
            result =
                    driver.inference(
                            tEnv,
                            statementSet,
                            input,
                            config.getWorldSize(),
                            config.getEntryPythonFilePath(),
                            config.getEntryFuncName(),
                            new HashMap<>(config.getProperties()),
                            new ArrayList<>(outputNames));
        } catch (RuntimeException e) {
            throw lost(e);
        }
        if (result instanceof Table) {
            return (Table) result;
        }
        throw error(result);
    }

    /** The helper's interpreter and versions, e.g. for a support request. */
    public String describe() {
        return driver.describe();
    }

    private PyTorchException lost(RuntimeException e) {
        if (!process.isAlive()) {
            return new PyTorchException(
                    "The flink-torch-ml helper Python process (" + executable + ") exited with "
                            + "code " + process.exitValue() + " during the call; its output is "
                            + "above", e);
        }
        return new PyTorchException("Calling the flink-torch-ml helper Python process failed: "
                + e.getMessage(), e);
    }

    private static PyTorchException error(Object result) {
        String text = String.valueOf(result);
        String[] parts = text.split("\u0000", 3);
        if (parts.length == 3) {
            return new PyTorchException(parts[0] + ": " + parts[1], parts[0], parts[2], null);
        }
        return new PyTorchException("Unexpected answer from the flink-torch-ml helper: " + text);
    }

    /** Stop the helper and the gateway (idempotent). */
    public synchronized void close() {
        try {
            server.shutdown();
        } catch (RuntimeException ignored) {
            // already down
        }
        if (process.isAlive()) {
            process.destroy();
            try {
                if (!process.waitFor(5, TimeUnit.SECONDS)) {
                    process.destroyForcibly();
                }
            } catch (InterruptedException e) {
                process.destroyForcibly();
                Thread.currentThread().interrupt();
            }
        }
    }

    static String pythonExecutable(TableEnvironment tEnv) {
        Optional<String> client =
                tEnv.getConfig()
                        .getOptional(
                                ConfigOptions.key("python.client.executable")
                                        .stringType()
                                        .noDefaultValue());
        if (client.isPresent()) {
            return client.get();
        }
        String variable = System.getenv("PYFLINK_CLIENT_EXECUTABLE");
        if (variable != null && !variable.isEmpty()) {
            return variable;
        }
        return tEnv.getConfig()
                .getOptional(ConfigOptions.key("python.executable").stringType().noDefaultValue())
                .orElse("python3");
    }

    private static PythonBridge start(String executable) {
        String token = newToken();
        GatewayServer server = startGateway(token);
        Process process;
        try {
            ProcessBuilder builder =
                    new ProcessBuilder(executable, "-m", "flink_torch_ml.java_bridge");
            builder.environment().put(PORT_VARIABLE, Integer.toString(server.getListeningPort()));
            builder.redirectOutput(ProcessBuilder.Redirect.INHERIT);
            builder.redirectError(ProcessBuilder.Redirect.INHERIT);
            process = builder.start();
            try (OutputStream stdin = process.getOutputStream()) {
                stdin.write((token + "\n").getBytes(StandardCharsets.US_ASCII));
            }
        } catch (IOException e) {
            server.shutdown();
            throw new PyTorchException(
                    "Cannot start the flink-torch-ml helper Python process '" + executable
                            + "' (" + e.getMessage() + "): set python.client.executable (or the "
                            + "environment variable PYFLINK_CLIENT_EXECUTABLE) to a Python "
                            + "interpreter that has flink-torch-ml installed", e);
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> entryPoint = (Map<String, Object>) server.getGateway().getEntryPoint();
        long timeoutMs = (long) (startTimeoutSeconds() * 1000);
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (!entryPoint.containsKey(DRIVER_KEY)) {
            if (!process.isAlive()) {
                server.shutdown();
                throw new PyTorchException(
                        "The flink-torch-ml helper Python process '" + executable + "' exited "
                                + "with code " + process.exitValue() + " before it was ready "
                                + "(its output is above): is flink-torch-ml installed for that "
                                + "interpreter? Set python.client.executable (or "
                                + "PYFLINK_CLIENT_EXECUTABLE) to one that has it");
            }
            if (System.currentTimeMillis() > deadline) {
                process.destroyForcibly();
                server.shutdown();
                throw new PyTorchException(
                        "The flink-torch-ml helper Python process '" + executable + "' did not "
                                + "connect within " + timeoutMs / 1000 + " s (set "
                                + START_TIMEOUT_VARIABLE + " to wait longer)");
            }
            try {
                Thread.sleep(50);
            } catch (InterruptedException e) {
                process.destroyForcibly();
                server.shutdown();
                Thread.currentThread().interrupt();
                throw new PyTorchException("Interrupted while starting the helper", e);
            }
        }
        return new PythonBridge(
                server, process, (PythonDriver) entryPoint.get(DRIVER_KEY), executable);
    }

    private static double startTimeoutSeconds() {
        String value = System.getenv(START_TIMEOUT_VARIABLE);
        if (value != null) {
            try {
                double seconds = Double.parseDouble(value);
                if (seconds > 0) {
                    return seconds;
                }
            } catch (NumberFormatException ignored) {
                // fall through to the default
            }
        }
        return 120;
    }

    /**
     * A py4j gateway on loopback that requires {@code token}. Built and run on a daemon thread,
     * so its connection threads are daemons too and never keep the JVM alive.
     */
    private static GatewayServer startGateway(String token) {
        CompletableFuture<GatewayServer> built = new CompletableFuture<>();
        Thread thread =
                new Thread(
                        () -> {
                            try {
                                InetAddress loopback = InetAddress.getLoopbackAddress();
                                GatewayServer server =
                                        new GatewayServer.GatewayServerBuilder()
                                                .entryPoint(new ConcurrentHashMap<String, Object>())
                                                .javaPort(0)
                                                .javaAddress(loopback)
                                                .callbackClient(0, loopback, token)
                                                .authToken(token)
                                                .build();
                                built.complete(server);
                                server.start(false);
                            } catch (Throwable t) {
                                built.completeExceptionally(t);
                            }
                        },
                        "flink-torch-ml-gateway");
        thread.setDaemon(true);
        thread.start();
        try {
            GatewayServer server = built.get(30, TimeUnit.SECONDS);
            long deadline = System.currentTimeMillis() + 30_000;
            while (server.getListeningPort() <= 0) {
                if (System.currentTimeMillis() > deadline) {
                    throw new PyTorchException("The py4j gateway did not start listening");
                }
                Thread.sleep(10);
            }
            return server;
        } catch (PyTorchException e) {
            throw e;
        } catch (Exception e) {
            throw new PyTorchException("Cannot start the py4j gateway: " + e.getMessage(), e);
        }
    }

    private static String newToken() {
        byte[] bytes = new byte[32];
        new SecureRandom().nextBytes(bytes);
        StringBuilder hex = new StringBuilder();
        for (byte b : bytes) {
            hex.append(String.format("%02x", b));
        }
        return hex.toString();
    }
}
