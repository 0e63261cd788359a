import java.sql.Array;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;

/**
 * Ordinary pgjdbc work as a tenant role in its database (PGHOST, PGPORT,
 * PGUSER, PGPASSWORD, PGDATABASE): connect, DDL, server-side prepared
 * statements (prepareThreshold=1) in a transaction, result set metadata,
 * and the DatabaseMetaData calls that tools and ORMs make. Prints one
 * line starting with "pgjdbc ok"; any failure exits non-zero.
 */
public class Check {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
                + "/" + System.getenv("PGDATABASE") + "?prepareThreshold=1";
        try (Connection c = DriverManager.getConnection(url, System.getenv("PGUSER"),
                System.getenv("PGPASSWORD"))) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE java_items (id int PRIMARY KEY, note text)");
            }
            c.setAutoCommit(false);
            try (PreparedStatement p = c.prepareStatement("INSERT INTO java_items VALUES (?, ?)")) {
                for (int i = 0; i < 3; i++) {
                    p.setInt(1, i);
                    p.setString(2, "n" + i);
                    p.executeUpdate();
                }
            }
            c.commit();
            c.setAutoCommit(true);
            int seen = 0;
            try (PreparedStatement p =
                    c.prepareStatement("SELECT id, note FROM java_items WHERE id >= ? ORDER BY id")) {
                for (int round = 0; round < 3; round++) {
                    p.setInt(1, 0);
                    try (ResultSet r = p.executeQuery()) {
                        ResultSetMetaData md = r.getMetaData();
                        md.getColumnLabel(1);
                        md.isNullable(1);
                        md.isAutoIncrement(1);
                        md.getTableName(1);
                        while (r.next()) {
                            seen++;
                        }
                    }
                }
            }
            if (seen != 9) {
                throw new IllegalStateException("read " + seen + " rows, not 9");
            }
            DatabaseMetaData md = c.getMetaData();
            String schema = c.getSchema();
            md.getDatabaseProductVersion();
            md.getUserName();
            count(md.getCatalogs());
            count(md.getSchemas());
            count(md.getTableTypes());
            need(count(md.getTables(null, schema, "%", new String[] {"TABLE"})), "tables");
            need(count(md.getColumns(null, schema, "java_items", "%")), "columns");
            need(count(md.getPrimaryKeys(null, schema, "java_items")), "primary key");
            count(md.getIndexInfo(null, schema, "java_items", false, true));
            count(md.getImportedKeys(null, schema, "java_items"));
            count(md.getTypeInfo());
            count(md.getFunctions(null, schema, "%"));
            count(md.getProcedures(null, schema, "%"));
            count(md.getTablePrivileges(null, schema, "java_items"));
            count(md.getColumnPrivileges(null, schema, "java_items", "%"));
            count(md.getUDTs(null, schema, "%", null));
            Array tags = c.createArrayOf("text", new String[] {"a", "b"});
            try (PreparedStatement p = c.prepareStatement("SELECT ?::text[]")) {
                p.setArray(1, tags);
                try (ResultSet r = p.executeQuery()) {
                    r.next();
                    r.getArray(1).getArray();
                }
            }
            System.out.println("pgjdbc ok " + md.getDriverVersion() + " schema " + schema);
        }
    }

    static int count(ResultSet r) throws SQLException {
        int n = 0;
        while (r.next()) {
            n++;
        }
        r.close();
        return n;
    }

    static void need(int n, String what) {
        if (n == 0) {
            throw new IllegalStateException("no " + what + " listed");
        }
    }
}
