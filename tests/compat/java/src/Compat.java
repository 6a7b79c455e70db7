import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.stream.Collectors;

/**
 * The compatibility suite's JDBC client: clickhouse-jdbc with the URL a DBeaver or Metabase user
 * types and no driver properties but the credentials. It prints one line per result row,
 * {@code check<TAB>cell<TAB>...}, which tests/compat/clients.py reads; the SQL comes from the
 * environment (COMPAT_*), so the suite keeps one copy of it.
 */
public final class Compat {
    private static final DateTimeFormatter AT =
        DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm:ss.SSSSSS");

    public static void main(String[] args) throws SQLException {
        String url = "jdbc:clickhouse://127.0.0.1:" + env("COMPAT_PORT") + "/"
            + env("COMPAT_DATABASE");
        Properties credentials = new Properties();
        credentials.setProperty("user", "default");
        credentials.setProperty("password", env("COMPAT_KEY"));
        try (Connection connection = DriverManager.getConnection(url, credentials)) {
            try (Statement statement = connection.createStatement()) {
                print("group_by", statement.executeQuery(env("COMPAT_GROUP_BY")));
                printTyped(statement.executeQuery(env("COMPAT_TYPED")));
            }
            String parameterized = env("COMPAT_POSITIONAL");
            try (PreparedStatement prepared = connection.prepareStatement(parameterized)) {
                prepared.setString(1, "checkout");
                prepared.setInt(2, 2);
                print("parameterized", prepared.executeQuery());
            }
            DatabaseMetaData metadata = connection.getMetaData();
            String schema = connection.getSchema();
            try (ResultSet tables = metadata.getTables(null, schema, "runs%", null)) {
                while (tables.next()) {
                    line("tables", tables.getString("TABLE_NAME"));
                }
            }
            try (ResultSet columns = metadata.getColumns(null, schema, "runs_current", "%ed_at")) {
                while (columns.next()) {
                    line("columns", columns.getString("COLUMN_NAME"),
                         columns.getString("TYPE_NAME"));
                }
            }
        }
    }

    private static void printTyped(ResultSet rows) throws SQLException {
        try (rows) {
            while (rows.next()) {
                Object[] steps = (Object[]) rows.getArray(4).getArray();
                line("typed", rows.getString(1), at(rows.getObject(2, OffsetDateTime.class)),
                     at(rows.getObject(3, OffsetDateTime.class)),
                     Arrays.stream(steps).map(String::valueOf).collect(Collectors.joining(",")));
            }
        }
    }

    private static void print(String check, ResultSet rows) throws SQLException {
        try (rows) {
            int width = rows.getMetaData().getColumnCount();
            while (rows.next()) {
                List<String> cells = new ArrayList<>();
                for (int column = 1; column <= width; column++) {
                    cells.add(rows.getString(column));
                }
                line(check, cells.toArray(String[]::new));
            }
        }
    }

    private static String at(OffsetDateTime value) {
        return value == null ? "NULL" : value.withOffsetSameInstant(ZoneOffset.UTC).format(AT);
    }

    private static void line(String check, String... cells) {
        System.out.println(check + "\t" + String.join("\t", cells));
    }

    private static String env(String name) {
        String value = System.getenv(name);
        if (value == null) {
            throw new IllegalArgumentException(
                name + " is not set (tests/compat/clients.py sets it)");
        }
        return value;
    }
}
