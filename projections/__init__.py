"""ClickHouse: the connection, the tables and their migrations, writers and queries."""
