import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Timestamp;

/**
 * pgjdbc through the router's PostgreSQL port (PGHOST, PGPORT, PGUSER =
 * the app, PGPASSWORD = its token, PGDATABASE = the keyspace; KEY_A and
 * KEY_B are bigint keys on two different shards): SCRAM login,
 * server-side prepared statements (prepareThreshold=1) with parameters
 * of common types, a transaction, an error with its SQLSTATE, and a
 * keyless aggregate merged across shards. Prints "pgjdbc ok" last; any
 * failure exits non-zero.
 */
public class WireCheck {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new IllegalStateException(what);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
                + "/" + System.getenv("PGDATABASE") + "?prepareThreshold=1&sslmode=disable";
        long a = Long.parseLong(System.getenv("KEY_A"));
        long b = Long.parseLong(System.getenv("KEY_B"));
        try (Connection c = DriverManager.getConnection(url, System.getenv("PGUSER"),
                System.getenv("PGPASSWORD"))) {
            c.setAutoCommit(false);
            try (PreparedStatement p = c.prepareStatement("INSERT INTO items (id, v) VALUES (?, ?)")) {
                p.setLong(1, a);
                p.setString(2, "java");
                check(p.executeUpdate() == 1, "insert a");
            }
            try (PreparedStatement p = c.prepareStatement("UPDATE items SET v = ? WHERE id = ?")) {
                p.setString(1, "java2");
                p.setLong(2, a);
                check(p.executeUpdate() == 1, "update a");
            }
            c.commit();
            c.setAutoCommit(true);
            // Parameters of common types, each back as it went, on a's row.
            Timestamp when = Timestamp.valueOf("2026-01-02 03:04:05");
            try (PreparedStatement p = c.prepareStatement(
                    "SELECT ?::int, ?::text, ?::numeric, ?::timestamptz, ?::boolean, v FROM items WHERE id = ?")) {
                for (int i = 0; i < 3; i++) {
                    p.setInt(1, 7);
                    p.setString(2, "é");
                    p.setBigDecimal(3, new BigDecimal("1.50"));
                    p.setTimestamp(4, when);
                    p.setBoolean(5, true);
                    p.setLong(6, a);
                    try (ResultSet r = p.executeQuery()) {
                        check(r.next(), "a's row");
                        check(r.getInt(1) == 7, "int " + r.getInt(1));
                        check("é".equals(r.getString(2)), "text " + r.getString(2));
                        check(r.getBigDecimal(3).compareTo(new BigDecimal("1.50")) == 0,
                                "numeric " + r.getBigDecimal(3));
                        check(when.equals(r.getTimestamp(4)), "timestamptz " + r.getTimestamp(4));
                        check(r.getBoolean(5), "boolean");
                        check("java2".equals(r.getString(6)), "v " + r.getString(6));
                        check(!r.next(), "one row");
                    }
                }
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO items (id, v) VALUES (?, ?)")) {
                p.setLong(1, b);
                p.setString(2, "java");
                check(p.executeUpdate() == 1, "insert b");
            }
            try (PreparedStatement p = c.prepareStatement("SELECT nope FROM items WHERE id = ?")) {
                p.setLong(1, a);
                p.executeQuery();
                check(false, "no error");
            } catch (SQLException e) {
                check("42703".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
            try (PreparedStatement p = c.prepareStatement("SELECT count(*), max(id) FROM items WHERE v LIKE ?")) {
                p.setString(1, "java%");
                try (ResultSet r = p.executeQuery()) {
                    check(r.next(), "an aggregate row");
                    check(r.getLong(1) == 2, "count " + r.getLong(1));
                    check(r.getLong(2) == Math.max(a, b), "max " + r.getLong(2));
                }
            }
            try (PreparedStatement p = c.prepareStatement("SELECT v FROM items WHERE id = ?")) {
                p.setLong(1, a);
                try (ResultSet r = p.executeQuery()) {
                    check(r.next() && "java2".equals(r.getString(1)), "committed value");
                }
            }
        }
        System.out.println("pgjdbc ok");
    }
}
