// The compatibility suite's Go client: clickhouse-go v2 over HTTP through database/sql, in two
// configurations, named by the first argument:
//
//	lz4:     an application's (LZ4-compressed blocks, no deadline);
//	grafana: Grafana's ClickHouse data source's (gzip, its client info, the ping under its
//	         10 s dial timeout and each query under its query timeout, from which
//	         clickhouse-go derives max_execution_time: 60 s, Grafana's default, or the
//	         seconds of a second argument).
//
// It prints one line per result row, "check<TAB>cell<TAB>...", which tests/compat/clients.py
// reads; the SQL comes from the environment (COMPAT_*), so the suite keeps one copy of it.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

type configuration struct {
	options      *clickhouse.Options
	pingTimeout  time.Duration
	queryTimeout time.Duration // 0: no deadline
}

func main() {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fail(fmt.Errorf("usage: compat lz4 | compat grafana [QUERY_TIMEOUT_S]"))
	}
	queryTimeout := 60 * time.Second
	if len(os.Args) == 3 {
		seconds, err := strconv.Atoi(os.Args[2])
		if err != nil || seconds <= 0 {
			fail(fmt.Errorf("QUERY_TIMEOUT_S: a positive number of seconds, not %q", os.Args[2]))
		}
		queryTimeout = time.Duration(seconds) * time.Second
	}
	config, err := configure(os.Args[1], queryTimeout)
	if err != nil {
		fail(err)
	}
	if err := run(config); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func configure(mode string, queryTimeout time.Duration) (configuration, error) {
	options := &clickhouse.Options{
		Addr:     []string{"127.0.0.1:" + os.Getenv("COMPAT_PORT")},
		Protocol: clickhouse.HTTP,
		Auth: clickhouse.Auth{
			Database: os.Getenv("COMPAT_DATABASE"),
			Username: "default",
			Password: os.Getenv("COMPAT_KEY"),
		},
	}
	switch mode {
	case "lz4":
		options.Compression = &clickhouse.Compression{Method: clickhouse.CompressionLZ4}
		return configuration{options: options, pingTimeout: 10 * time.Second}, nil
	case "grafana":
		options.Compression = &clickhouse.Compression{Method: clickhouse.CompressionGZIP}
		options.ClientInfo = clickhouse.ClientInfo{Products: []struct{ Name, Version string }{
			{Name: "grafana", Version: "12.3.0"}, {Name: "clickhouse-datasource", Version: "4.11.0"},
		}}
		options.DialTimeout = 10 * time.Second
		options.ReadTimeout = queryTimeout
		return configuration{options: options, pingTimeout: 10 * time.Second,
			queryTimeout: queryTimeout}, nil
	}
	return configuration{}, fmt.Errorf("unknown mode %q: lz4 or grafana", mode)
}

func run(config configuration) error {
	db := clickhouse.OpenDB(config.options)
	defer db.Close()
	ping, cancel := context.WithTimeout(context.Background(), config.pingTimeout)
	defer cancel()
	if err := db.PingContext(ping); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	query := func(check, text string, args ...any) (*sql.Rows, context.CancelFunc, error) {
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if config.queryTimeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, config.queryTimeout)
		}
		rows, err := db.QueryContext(ctx, text, args...)
		if err != nil {
			cancel()
			return nil, nil, fmt.Errorf("%s: %w", check, err)
		}
		return rows, cancel, nil
	}
	steps := []struct {
		check string
		text  string
		args  []any
		print func(string, *sql.Rows) error
	}{
		{"group_by", os.Getenv("COMPAT_GROUP_BY"), nil, printCells},
		{"typed", os.Getenv("COMPAT_TYPED"), nil, printTyped},
		{"parameterized", os.Getenv("COMPAT_POSITIONAL"), []any{"checkout", 2}, printCells},
		// A row, not LIMIT 0: the driver reads the types from the first Native block, and an
		// empty result has none.
		{"columns", "SELECT * FROM runs_current LIMIT 1", nil, printColumns},
	}
	for _, step := range steps {
		rows, cancel, err := query(step.check, step.text, step.args...)
		if err != nil {
			return err
		}
		err = step.print(step.check, rows)
		rows.Close()
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", step.check, err)
		}
	}
	return nil
}

func printCells(check string, rows *sql.Rows) error {
	columns, err := rows.Columns()
	if err != nil {
		return err
	}
	for rows.Next() {
		cells := make([]any, len(columns))
		targets := make([]any, len(columns))
		for i := range cells {
			targets[i] = &cells[i]
		}
		if err := rows.Scan(targets...); err != nil {
			return err
		}
		text := make([]string, len(cells))
		for i, cell := range cells {
			text[i] = fmt.Sprint(cell)
		}
		line(check, text...)
	}
	return rows.Err()
}

func printTyped(check string, rows *sql.Rows) error {
	for rows.Next() {
		var runID string
		var createdAt time.Time
		var finishedAt *time.Time
		var steps []string
		if err := rows.Scan(&runID, &createdAt, &finishedAt, &steps); err != nil {
			return err
		}
		line(check, runID, at(&createdAt), at(finishedAt), strings.Join(steps, ","))
	}
	return rows.Err()
}

// printColumns is the driver's own introspection: the column types it read from the result.
func printColumns(check string, rows *sql.Rows) error {
	types, err := rows.ColumnTypes()
	if err != nil {
		return err
	}
	for _, column := range types {
		if strings.HasSuffix(column.Name(), "ed_at") {
			line(check, column.Name(), column.DatabaseTypeName())
		}
	}
	return rows.Err()
}

func at(value *time.Time) string {
	if value == nil {
		return "NULL"
	}
	return value.UTC().Format("2006-01-02 15:04:05.000000")
}

func line(check string, cells ...string) {
	fmt.Println(check + "\t" + strings.Join(cells, "\t"))
}
