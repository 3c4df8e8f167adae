// Package store keeps the demo's items in PostgreSQL and migrates its schema.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Item is one stored item.
type Item struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// ErrDuplicate is returned by CreateItem when an item with that name exists.
var ErrDuplicate = errors.New("an item with this name already exists")

// SeedNames are the items Seed inserts.
var SeedNames = []string{"apple", "banana", "cherry"}

// Store is a pool of connections to the demo database.
type Store struct {
	pool *pgxpool.Pool
}

// Open parses url and returns a Store. It does not connect: the first query
// does, so a server can start while PostgreSQL is still down.
func Open(url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing database url: %w", err) // pgconn redacts the password
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("opening database pool: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that PostgreSQL answers a query.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.pool.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("postgres ping: %w", err)
	}
	return nil
}

// WaitReady pings until PostgreSQL answers or wait has passed; it returns
// the last error then.
func (s *Store) WaitReady(ctx context.Context, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		err := s.Ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("postgres not ready after %s: %w", wait, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ListItems returns every item, ordered by id.
func (s *Store) ListItems(ctx context.Context) ([]Item, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, name, created_at FROM items ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("listing items: %w", err)
	}
	items, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Item])
	if err != nil {
		return nil, fmt.Errorf("listing items: %w", err)
	}
	return items, nil
}

// CreateItem inserts an item named name and returns it.
func (s *Store) CreateItem(ctx context.Context, name string) (Item, error) {
	var it Item
	err := s.pool.QueryRow(ctx, `INSERT INTO items (name) VALUES ($1) RETURNING id, name, created_at`,
		name).Scan(&it.ID, &it.Name, &it.CreatedAt)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
			return Item{}, ErrDuplicate
		}
		return Item{}, fmt.Errorf("creating item: %w", err)
	}
	return it, nil
}

// Seed inserts each of names that is not already present and returns how
// many it inserted.
func (s *Store) Seed(ctx context.Context, names []string) (int, error) {
	tag, err := s.pool.Exec(ctx,
		`INSERT INTO items (name)
		 SELECT n FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i)
		 WHERE NOT EXISTS (SELECT 1 FROM items WHERE items.name = t.n) -- no identity gaps on reruns
		 ORDER BY i
		 ON CONFLICT (name) DO NOTHING`, names)
	if err != nil {
		return 0, fmt.Errorf("seeding items: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
