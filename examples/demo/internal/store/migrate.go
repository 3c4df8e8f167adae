package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var embedded embed.FS

// Migration is one versioned SQL file, named NNNN_description.sql.
type Migration struct {
	Version int64
	Name    string // file name without .sql, e.g. "0001_items"
	SQL     string
}

var migrationName = regexp.MustCompile(`^([0-9]+)_([a-z0-9_]+)\.sql$`)

// Migrations returns the embedded migrations, sorted by version.
func Migrations() ([]Migration, error) {
	return ParseMigrations(embedded, "migrations")
}

// ParseMigrations reads every file in dir of fsys as a migration and sorts
// them by version. A file whose name does not match NNNN_description.sql, a
// version below 1, an empty file or two files with the same version are
// errors.
func ParseMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("reading migrations: %w", err)
	}
	var ms []Migration
	seen := map[int64]string{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration %q: name must look like 0001_description.sql", e.Name())
		}
		v, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("migration %q: version must be a positive number", e.Name())
		}
		if prev, ok := seen[v]; ok {
			return nil, fmt.Errorf("migrations %q and %q have the same version %d", prev, e.Name(), v)
		}
		seen[v] = e.Name()
		body, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading migration %q: %w", e.Name(), err)
		}
		if len(body) == 0 {
			return nil, fmt.Errorf("migration %q is empty", e.Name())
		}
		ms = append(ms, Migration{Version: v, Name: e.Name()[:len(e.Name())-len(".sql")], SQL: string(body)})
	}
	if len(ms) == 0 {
		return nil, errors.New("no migrations found")
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}

// migrateLockKey serialises concurrent migrate runs (pg_advisory_xact_lock).
const migrateLockKey = 7_246_101

// Migrate applies each migration not yet recorded in schema_migrations, in
// order, each in its own transaction together with its record. It calls
// applied with each migration it applied, and returns how many it applied.
func (s *Store) Migrate(ctx context.Context, ms []Migration, applied func(Migration)) (int, error) {
	if _, err := s.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    bigint PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return 0, fmt.Errorf("creating schema_migrations: %w", err)
	}
	n := 0
	for _, m := range ms {
		done, err := s.applyOne(ctx, m)
		if err != nil {
			return n, fmt.Errorf("migration %s: %w", m.Name, err)
		}
		if done {
			n++
			if applied != nil {
				applied(m)
			}
		}
	}
	return n, nil
}

// applyOne applies m unless it is already recorded; it reports whether it did.
func (s *Store) applyOne(ctx context.Context, m Migration) (bool, error) {
	applied := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
			return fmt.Errorf("taking migration lock: %w", err)
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`,
			m.Version).Scan(&exists); err != nil {
			return fmt.Errorf("checking schema_migrations: %w", err)
		}
		if exists {
			return nil
		}
		// No arguments: pgx uses the simple protocol, so a file may hold several statements.
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`,
			m.Version, m.Name); err != nil {
			return fmt.Errorf("recording: %w", err)
		}
		applied = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return applied, nil
}

// SchemaVersion returns the highest applied migration version, 0 if none.
func (s *Store) SchemaVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.pool.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM schema_migrations`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	return v, nil
}
