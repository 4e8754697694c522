// pgkeel driver scenario: the PostgreSQL JDBC driver with prepareThreshold=1.
//
// From its first execution a PreparedStatement becomes a named server-side
// statement (S_1, S_2, ...) that the driver keeps in its per-connection
// cache and reuses, even from new PreparedStatement objects with the same
// SQL. A pooler that lends each transaction a different server connection
// must make those names exist wherever the transaction lands.
//
// Run: java -cp /usr/share/java/postgresql.jar Scenario.java
// Connection parameters come from PGHOST, PGPORT, PGUSER, PGPASSWORD and
// PGDATABASE; DRIVER_CLIENTS (20) and DRIVER_ITERATIONS (200) scale the run.
// Exits 1 naming the first failed check of each client.

import java.io.ByteArrayOutputStream;
import java.io.StringReader;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicReference;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class Scenario {
    static final int CLIENTS = intEnv("DRIVER_CLIENTS", 20);
    static final int ITERATIONS = intEnv("DRIVER_ITERATIONS", 200);
    static final int COPY_ROWS = 1000;
    static final int LARGE_ROWS = 200_000;
    static final Set<Integer> LARGE_CLIENTS = Set.of(1, 2);
    static final int CANCEL_CLIENT = 0;
    static final int DOOMED_ID = 1_000_000;
    static final long TIMEOUT_MS = 20_000;

    static class Failed extends RuntimeException {
        Failed(String what) {
            super(what);
        }
    }

    static void check(boolean cond, String what) {
        if (!cond) throw new Failed(what);
    }

    static int intEnv(String name, int dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : Integer.parseInt(v);
    }

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "127.0.0.1") + ":" + env("PGPORT", "5432") + "/"
                + env("PGDATABASE", "postgres");
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", "postgres"));
        p.setProperty("password", env("PGPASSWORD", ""));
        p.setProperty("prepareThreshold", "1");
        p.setProperty("connectTimeout", "10");
        return DriverManager.getConnection(url, p);
    }

    static void setup() throws SQLException {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            c.setAutoCommit(false);
            for (int i = 0; i < CLIENTS; i++) {
                s.execute("DROP SCHEMA IF EXISTS client_" + i + " CASCADE");
                s.execute("CREATE SCHEMA client_" + i);
                s.execute("CREATE TABLE client_" + i
                        + ".items (id int PRIMARY KEY, client int NOT NULL, val text NOT NULL)");
                s.execute("CREATE TABLE client_" + i + ".copied (id int PRIMARY KEY, txt text NOT NULL)");
            }
            c.commit();
        }
    }

    static void waitActive(Connection watch, String marker) throws Exception {
        long deadline = System.currentTimeMillis() + TIMEOUT_MS;
        try (PreparedStatement ps = watch.prepareStatement(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND datname = current_database() "
                        + "AND pid <> pg_backend_pid() AND position(? in query) > 0")) {
            ps.setString(1, marker);
            while (System.currentTimeMillis() < deadline) {
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    if (rs.getLong(1) > 0) return;
                }
                Thread.sleep(20);
            }
        }
        throw new Failed("the query " + marker + " never showed up as active in pg_stat_activity");
    }

    static double cancelLongQuery(Connection c, String schema) throws Exception {
        long started = System.nanoTime();
        try (Connection watch = connect();
                PreparedStatement sleep = c.prepareStatement("SELECT pg_sleep(?) AS cancel_me")) {
            sleep.setInt(1, 30);
            AtomicReference<Exception> cancelError = new AtomicReference<>();
            Thread canceller = new Thread(() -> {
                try {
                    waitActive(watch, "AS cancel_me");
                } catch (Exception e) {
                    cancelError.set(e);
                }
                // Even unseen, the query is cancelled: the phase fails
                // either way, and it does not wait 30 s.
                try {
                    sleep.cancel();
                } catch (SQLException e) {
                    cancelError.compareAndSet(null, e);
                }
            });
            canceller.start();
            try {
                sleep.executeQuery().close();
                canceller.join();
                if (cancelError.get() != null) throw cancelError.get();
                throw new Failed("pg_sleep(30) finished: the cancel did not reach it");
            } catch (SQLException e) {
                canceller.join();
                if (cancelError.get() != null) throw cancelError.get();
                check("57014".equals(e.getSQLState()),
                        "cancel gave SQLSTATE " + e.getSQLState() + " (" + e.getMessage() + "), want 57014");
            }
        }
        double elapsed = (System.nanoTime() - started) / 1e9;
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 1, current_schema()")) {
            rs.next();
            check(rs.getInt(1) == 1 && schema.equals(rs.getString(2)),
                    "after the cancel the session answered " + rs.getInt(1) + ", " + rs.getString(2));
        }
        return elapsed;
    }

    interface Phase {
        void run() throws Exception;
    }

    /** Failures by phase: each phase runs even when an earlier one failed,
     *  so one run tells everything that breaks. */
    static class Report {
        final Map<String, List<String>> failed = Collections.synchronizedMap(new java.util.LinkedHashMap<>());

        void run(String phase, String who, Phase fn) {
            try {
                fn.run();
            } catch (Throwable e) {
                String first = String.valueOf(e).split("\n", 2)[0];
                failed.computeIfAbsent(phase, k -> Collections.synchronizedList(new ArrayList<>())).add(who + ": " + first);
            }
        }

        void exitIfFailed(String driver) {
            for (Map.Entry<String, List<String>> f : failed.entrySet()) {
                List<String> msgs = f.getValue();
                System.err.println("FAIL " + driver + " [" + f.getKey() + "]: " + msgs.size() + " failed, first: " + msgs.get(0));
                for (String m : msgs.subList(1, Math.min(3, msgs.size()))) System.err.println("    also " + m);
            }
            if (!failed.isEmpty()) System.exit(1);
        }
    }

    /** Runs `body` in a transaction; on failure rolls back, so the session
     *  stays usable for the next phases. */
    static void inTransaction(Connection c, Phase body) throws Exception {
        c.setAutoCommit(false);
        try {
            body.run();
            c.commit();
        } catch (Exception e) {
            try {
                c.rollback();
            } catch (SQLException ignored) {
                // The phase's own error is the one to report.
            }
            throw e;
        } finally {
            c.setAutoCommit(true);
        }
    }

    static void client(int i, Map<String, Double> results, Map<Integer, Integer> pidsSeen, Report report)
            throws Exception {
        String schema = "client_" + i;
        String app = "jdbc-client-" + i;
        String who = "client " + i;
        try (Connection c = connect()) {
            try (Statement s = c.createStatement()) {
                s.execute("SET search_path TO " + schema);
                s.execute("SET application_name TO '" + app + "'");
            }

            report.run("prepared statements in 200 transactions", who, () -> {
                Set<Integer> pids = new HashSet<>();
                for (int n = 0; n < ITERATIONS; n++) {
                    final int id = n;
                    String val = "v" + i + "-" + n;
                    // New statement objects every time: the driver's
                    // statement cache hands back the same server-side name.
                    inTransaction(c, () -> {
                        try (PreparedStatement ins = c.prepareStatement(
                                "INSERT INTO items (id, client, val) VALUES (?, ?, ?)");
                                PreparedStatement sel = c.prepareStatement(
                                        "SELECT val, client, current_schema(), current_setting('application_name'), "
                                                + "pg_backend_pid() FROM items WHERE id = ?")) {
                            ins.setInt(1, id);
                            ins.setInt(2, i);
                            ins.setString(3, val);
                            check(ins.executeUpdate() == 1, "transaction " + id + ": INSERT did not insert one row");
                            sel.setInt(1, id);
                            try (ResultSet rs = sel.executeQuery()) {
                                check(rs.next(), "transaction " + id + ": row " + id + " not found");
                                String got = rs.getString(1) + "|" + rs.getInt(2) + "|" + rs.getString(3) + "|"
                                        + rs.getString(4);
                                String want = val + "|" + i + "|" + schema + "|" + app;
                                check(got.equals(want), "transaction " + id + ": read back " + got + ", want " + want);
                                pids.add(rs.getInt(5));
                            }
                        }
                    });
                    try (PreparedStatement cnt = c.prepareStatement("SELECT count(*) FROM items WHERE client = ?")) {
                        cnt.setInt(1, i);
                        try (ResultSet rs = cnt.executeQuery()) {
                            rs.next();
                            check(rs.getLong(1) == n + 1,
                                    "after transaction " + n + ": " + rs.getLong(1) + " rows, want " + (n + 1));
                        }
                    }
                    if (n % 50 == 0) {
                        try (PreparedStatement show = c.prepareStatement("SHOW application_name");
                                ResultSet rs = show.executeQuery()) {
                            rs.next();
                            check(app.equals(rs.getString(1)), "SHOW application_name = " + rs.getString(1));
                        }
                    }
                }
                pidsSeen.put(i, pids.size());
            });

            report.run("error in a transaction, ROLLBACK", who, () -> {
                try {
                    inTransaction(c, () -> {
                        try (PreparedStatement ins = c.prepareStatement(
                                "INSERT INTO items (id, client, val) VALUES (?, ?, ?)");
                                PreparedStatement div = c.prepareStatement("SELECT 1 / ?")) {
                            ins.setInt(1, DOOMED_ID);
                            ins.setInt(2, i);
                            ins.setString(3, "doomed");
                            ins.executeUpdate();
                            div.setInt(1, 0);
                            div.executeQuery().close();
                        }
                    });
                    throw new Failed("1/0 inside a transaction raised nothing");
                } catch (SQLException e) {
                    check("22012".equals(e.getSQLState()), "1/0 gave SQLSTATE " + e.getSQLState() + ": " + e);
                }
                try (PreparedStatement ps = c.prepareStatement(
                        "SELECT count(*), current_schema(), current_setting('application_name') FROM items WHERE id = ?")) {
                    ps.setInt(1, DOOMED_ID);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        String got = rs.getLong(1) + "|" + rs.getString(2) + "|" + rs.getString(3);
                        check(got.equals("0|" + schema + "|" + app), "after ROLLBACK: " + got);
                    }
                }
            });

            report.run("COPY in and out", who, () -> {
                CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
                StringBuilder lines = new StringBuilder();
                for (int k = 0; k < COPY_ROWS; k++) lines.append(k).append('\t').append("c" + i + "-" + k).append('\n');
                long copied = copy.copyIn("COPY copied (id, txt) FROM STDIN", new StringReader(lines.toString()));
                check(copied == COPY_ROWS, "COPY FROM reported " + copied + " rows");
                ByteArrayOutputStream out = new ByteArrayOutputStream();
                long outRows = copy.copyOut("COPY (SELECT id, txt FROM copied ORDER BY id) TO STDOUT", out);
                check(outRows == COPY_ROWS, "COPY TO reported " + outRows + " rows");
                check(out.toString(StandardCharsets.UTF_8).equals(lines.toString()),
                        "COPY TO did not return the rows copied in");
            });

            if (LARGE_CLIENTS.contains(i)) {
                // Fetched 1000 rows at a time through a portal, inside a transaction.
                report.run("large result", who, () -> inTransaction(c, () -> {
                    try (PreparedStatement ps = c.prepareStatement(
                            "SELECT g, md5(g::text) FROM generate_series(1, ?) g")) {
                        ps.setFetchSize(1000);
                        ps.setInt(1, LARGE_ROWS);
                        long rows = 0, sum = 0, bad = 0;
                        MessageDigest md5 = MessageDigest.getInstance("MD5");
                        try (ResultSet rs = ps.executeQuery()) {
                            while (rs.next()) {
                                int g = rs.getInt(1);
                                rows++;
                                sum += g;
                                byte[] d = md5.digest(Integer.toString(g).getBytes(StandardCharsets.UTF_8));
                                String hex = String.format("%032x", new BigInteger(1, d));
                                if (!hex.equals(rs.getString(2))) bad++;
                            }
                        }
                        check(rows == LARGE_ROWS, rows + " rows, want " + LARGE_ROWS);
                        check(sum == (long) LARGE_ROWS * (LARGE_ROWS + 1) / 2, "wrong sum of g");
                        check(bad == 0, bad + " rows with a wrong md5");
                    }
                }));
            }

            if (i == CANCEL_CLIENT) report.run("cancel", who, () -> results.put("cancel", cancelLongQuery(c, schema)));

            report.run("search_path at the end", who, () -> {
                try (PreparedStatement ps = c.prepareStatement("SELECT count(*) FROM items");
                        ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getLong(1) == ITERATIONS, rs.getLong(1) + " rows in " + schema + ".items, want " + ITERATIONS);
                }
            });
        }
    }

    static void listenNotify() throws Exception {
        try (Connection listener = connect(); Connection notifier = connect()) {
            try (Statement s = listener.createStatement()) {
                s.execute("LISTEN drivers_events");
            }
            PGConnection pgl = listener.unwrap(PGConnection.class);
            for (int k = 0; k < 3; k++) {
                String payload = "hello-" + k;
                try (PreparedStatement ps = notifier.prepareStatement("SELECT pg_notify('drivers_events', ?)")) {
                    ps.setString(1, payload);
                    ps.executeQuery().close();
                }
                List<PGNotification> got = new ArrayList<>();
                long deadline = System.currentTimeMillis() + TIMEOUT_MS;
                while (got.isEmpty() && System.currentTimeMillis() < deadline) {
                    PGNotification[] ns = pgl.getNotifications((int) Math.max(1, deadline - System.currentTimeMillis()));
                    if (ns != null) Collections.addAll(got, ns);
                }
                check(got.size() == 1, "notification " + k + ": received " + got.size() + " within " + TIMEOUT_MS + " ms");
                check(got.get(0).getName().equals("drivers_events") && got.get(0).getParameter().equals(payload),
                        "notification " + k + ": " + got.get(0).getName() + "/" + got.get(0).getParameter());
                try (PreparedStatement ps = listener.prepareStatement("SELECT ?::int")) {
                    ps.setInt(1, k);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check(rs.getInt(1) == k, "listener's query answered " + rs.getInt(1));
                    }
                }
            }
        }
    }

    static void verify() throws SQLException {
        try (Connection c = connect()) {
            for (int i = 0; i < CLIENTS; i++) {
                try (PreparedStatement ps = c.prepareStatement("SELECT count(*), count(*) FILTER (WHERE client <> ?), "
                        + "count(*) FILTER (WHERE id = ?) FROM client_" + i + ".items")) {
                    ps.setInt(1, i);
                    ps.setInt(2, DOOMED_ID);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        String got = rs.getLong(1) + "|" + rs.getLong(2) + "|" + rs.getLong(3);
                        check(got.equals(ITERATIONS + "|0|0"), "client_" + i + ".items holds " + got);
                    }
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        setup();
        Map<String, Double> results = new ConcurrentHashMap<>();
        Map<Integer, Integer> pids = new ConcurrentHashMap<>();
        Report report = new Report();
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < CLIENTS; i++) {
            final int id = i;
            // Connecting and the SETs belong to no phase: their failure is the session's.
            Thread t = new Thread(() -> report.run("session", "client " + id, () -> client(id, results, pids, report)));
            t.start();
            threads.add(t);
        }
        for (Thread t : threads) t.join();
        report.run("LISTEN/NOTIFY", "listener", Scenario::listenNotify);
        report.run("final table contents", "checker", Scenario::verify);
        report.exitIfFailed("jdbc");
        System.out.printf("jdbc %s: %d clients x %d transactions ok; server backends seen per client: %d..%d; "
                + "cancel ok (57014 after %.2fs); COPY, large result, rollback, LISTEN/NOTIFY ok%n",
                org.postgresql.util.DriverInfo.DRIVER_VERSION, CLIENTS, ITERATIONS,
                Collections.min(pids.values()), Collections.max(pids.values()), results.get("cancel"));
    }
}
