package app

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want Config
	}{
		{name: "defaults", env: nil,
			want: Config{DatabaseURL: DefaultDatabaseURL, ValkeyAddr: DefaultValkeyAddr, Addr: DefaultAddr}},
		{name: "overrides", env: map[string]string{
			"DATABASE_URL": "postgres://x@h/db", "VALKEY_ADDR": "h:1", "ADDR": "127.0.0.1:9",
		}, want: Config{DatabaseURL: "postgres://x@h/db", ValkeyAddr: "h:1", Addr: "127.0.0.1:9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ConfigFromEnv(func(k string) string { return tt.env[k] })
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCountStart(t *testing.T) {
	dir := t.TempDir()
	for want := 1; want <= 3; want++ {
		n, err := countStart(dir)
		if err != nil || n != want {
			t.Fatalf("countStart = %d, %v; want %d", n, err, want)
		}
	}
	if _, err := countStart(filepath.Join(dir, "missing")); err == nil {
		t.Error("countStart in a missing directory succeeded")
	}
}

func TestMainArgs(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "version", args: []string{"version"}, wantStdout: "demo-api 1.2.3 ("},
		{name: "--version", args: []string{"--version"}, wantStdout: "demo-api 1.2.3 ("},
		{name: "help", args: []string{"--help"}, wantStdout: "usage: demo-api"},
		{name: "serve -h", args: []string{"serve", "-h"}, wantStdout: "usage: demo-api"},
		{name: "no command", args: nil, wantCode: 2, wantStderr: "no command given"},
		{name: "unknown command", args: []string{"frob"}, wantCode: 2, wantStderr: `unknown command "frob"`},
		{name: "unknown flag", args: []string{"serve", "--port", "1"}, wantCode: 2,
			wantStderr: "flag provided but not defined"},
		{name: "extra argument", args: []string{"migrate", "now"}, wantCode: 2, wantStderr: `unexpected argument "now"`},
		{name: "bad duration", args: []string{"seed", "--wait", "soon"}, wantCode: 2, wantStderr: "invalid value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(context.Background(), "1.2.3", tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("code = %d, want %d; stderr %q", code, tt.wantCode, stderr.String())
			}
			if !strings.HasPrefix(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout = %q, want prefix %q", stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr = %q, want %q in it", stderr.String(), tt.wantStderr)
			}
		})
	}
}
