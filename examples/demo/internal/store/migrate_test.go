package store

import (
	"strings"
	"testing"
	"testing/fstest"
)

func TestParseMigrations(t *testing.T) {
	sql := &fstest.MapFile{Data: []byte("SELECT 1;")}
	tests := []struct {
		name      string
		files     fstest.MapFS
		wantNames []string
		wantErr   string
	}{
		{name: "sorted by version, not by name",
			files: fstest.MapFS{
				"m/10_ten.sql": sql, "m/0002_two.sql": sql, "m/1_one.sql": sql,
			},
			wantNames: []string{"1_one", "0002_two", "10_ten"}},
		{name: "subdirectories ignored",
			files:     fstest.MapFS{"m/0001_a.sql": sql, "m/old/0001_a.sql": sql},
			wantNames: []string{"0001_a"}},
		{name: "duplicate version",
			files:   fstest.MapFS{"m/0001_a.sql": sql, "m/001_b.sql": sql},
			wantErr: "same version 1"},
		{name: "bad name", files: fstest.MapFS{"m/items.sql": sql}, wantErr: "must look like"},
		{name: "not sql", files: fstest.MapFS{"m/0001_a.txt": sql}, wantErr: "must look like"},
		{name: "upper case", files: fstest.MapFS{"m/0001_Items.sql": sql}, wantErr: "must look like"},
		{name: "version zero", files: fstest.MapFS{"m/0000_a.sql": sql}, wantErr: "positive"},
		{name: "version too big", files: fstest.MapFS{"m/99999999999999999999_a.sql": sql}, wantErr: "positive"},
		{name: "empty file", files: fstest.MapFS{"m/0001_a.sql": &fstest.MapFile{}}, wantErr: "empty"},
		{name: "no migrations", files: fstest.MapFS{"m": &fstest.MapFile{Mode: 0o755 | 1<<31}}, wantErr: "no migrations"},
		{name: "no directory", files: fstest.MapFS{}, wantErr: "reading migrations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := ParseMigrations(tt.files, "m")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range ms {
				names = append(names, m.Name)
			}
			if strings.Join(names, " ") != strings.Join(tt.wantNames, " ") {
				t.Errorf("names = %v, want %v", names, tt.wantNames)
			}
		})
	}
}

func TestEmbeddedMigrations(t *testing.T) {
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	// Versions start at 1 and have no gaps, so a missing file is noticed.
	for i, m := range ms {
		if m.Version != int64(i+1) {
			t.Errorf("migration %d is %s, want version %d", i, m.Name, i+1)
		}
		if strings.TrimSpace(m.SQL) == "" {
			t.Errorf("%s is blank", m.Name)
		}
	}
	if len(ms) < 2 || ms[0].Name != "0001_items" {
		t.Errorf("got %d migrations starting %q, want 0001_items first", len(ms), ms[0].Name)
	}
}
