/*
 * Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE in the project root.
 */
package org.flinkextended.flink.ml.pytorch.examples;

import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.ResultKind;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.table.api.TableResult;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Runs a SQL script (statements ending with ';', '--' comments) in a Java Table API job and
 * prints each query's rows: how a Java or pure-SQL pipeline scores with a saved PyTorch model
 * through {@code CREATE TEMPORARY FUNCTION f AS 'flink_torch_ml.sql.<model>' LANGUAGE PYTHON}.
 * The apache-flink wheel's own SQL Client cannot start (it lacks the SQL Gateway's jar), so
 * scripts/flink-cluster.sh sql runs scripts with this class.
 *
 * <p>Arguments: the script's path.
 */
public class SqlScript {
    private static final Pattern SET =
            Pattern.compile("(?is)SET\\s+'([^']+)'\\s*=\\s*'([^']*)'");

    public static void main(String[] args) throws Exception {
        TableEnvironment tEnv = TableEnvironment.create(EnvironmentSettings.inStreamingMode());
        for (String statement : statements(new String(
                Files.readAllBytes(Paths.get(args[0])), StandardCharsets.UTF_8))) {
            Matcher set = SET.matcher(statement);
            if (set.matches()) { // SQL Client syntax: SET 'key' = 'value'
                tEnv.getConfig().getConfiguration().setString(set.group(1), set.group(2));
                continue;
            }
            TableResult result = tEnv.executeSql(statement);
            if (result.getResultKind() == ResultKind.SUCCESS_WITH_CONTENT) {
                result.print();
            } else {
                result.await();
            }
        }
    }

    /** The script's statements, comments removed. */
    static List<String> statements(String script) {
        StringBuilder text = new StringBuilder();
        for (String line : script.split("\n")) {
            String trimmed = line.trim();
            if (!trimmed.startsWith("--")) {
                text.append(line).append('\n');
            }
        }
        List<String> statements = new ArrayList<>();
        for (String statement : text.toString().split(";\\s*\n")) {
            if (!statement.trim().isEmpty()) {
                statements.add(statement.trim().replaceAll(";$", ""));
            }
        }
        return statements;
    }
}
