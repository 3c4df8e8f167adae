package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"testing"
	"time"
)

// openTestStore opens DEMO_TEST_DATABASE_URL in a fresh schema that is
// dropped at the end, or skips the test.
func openTestStore(t *testing.T) *Store {
	t.Helper()
	raw := os.Getenv("DEMO_TEST_DATABASE_URL")
	if raw == "" {
		t.Skip("DEMO_TEST_DATABASE_URL not set; e.g. postgres://demo:demo@127.0.0.1:5432/demo?sslmode=disable")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	b := make([]byte, 6)
	rand.Read(b)
	schema := "demo_test_" + hex.EncodeToString(b)
	if _, err := admin.pool.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("dropping %s: %v", schema, err)
		}
	})

	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	st, err := Open(u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func TestIntegrationMigrateSeedList(t *testing.T) {
	st := openTestStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}

	var applied []string
	n, err := st.Migrate(ctx, ms, func(m Migration) { applied = append(applied, m.Name) })
	if err != nil {
		t.Fatal(err)
	}
	if n != len(ms) || len(applied) != len(ms) || applied[0] != "0001_items" {
		t.Fatalf("first migrate applied %d %v, want all %d in order", n, applied, len(ms))
	}
	n, err = st.Migrate(ctx, ms, func(m Migration) { t.Errorf("second migrate applied %s", m.Name) })
	if err != nil || n != 0 {
		t.Fatalf("second migrate: %d, %v; want 0, nil", n, err)
	}
	if v, err := st.SchemaVersion(ctx); err != nil || v != ms[len(ms)-1].Version {
		t.Fatalf("SchemaVersion = %d, %v", v, err)
	}

	if n, err := st.Seed(ctx, SeedNames); err != nil || n != len(SeedNames) {
		t.Fatalf("first seed: %d, %v; want %d", n, err, len(SeedNames))
	}
	if n, err := st.Seed(ctx, SeedNames); err != nil || n != 0 {
		t.Fatalf("second seed: %d, %v; want 0", n, err)
	}
	if _, err := st.CreateItem(ctx, "zucchini"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateItem(ctx, "apple"); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate create: %v, want ErrDuplicate", err)
	}

	items, err := st.ListItems(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]string{}, SeedNames...), "zucchini")
	if len(items) != len(want) {
		t.Fatalf("items = %+v, want names %v", items, want)
	}
	for i, it := range items {
		if it.Name != want[i] || (i > 0 && it.ID <= items[i-1].ID) || it.CreatedAt.IsZero() {
			t.Errorf("item %d = %+v, want name %q in id order", i, it, want[i])
		}
	}
	if err := st.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}
