package guest

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/agent"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// demoYAML has every kind of service: a unit the base has, commands with
// arguments and env that need quoting, dependencies, ports, and each
// health check.
const demoYAML = `
name: shop
base: {suite: trixie, packages: [postgresql]}
files:
  - {src: app, dst: /usr/local/bin/shop, mode: "0755"}
services:
  db:
    unit: postgresql.service
    health: {tcp: 5432, timeout: 3m}
  cache:
    run: [/usr/bin/valkey-server, --port, "6379"]
    user: valkey
    health: {exec: [/usr/bin/valkey-cli, ping], timeout: 30s}
  api:
    run:
      - /usr/local/bin/shop
      - serve
      - --greeting=hello world
      - --discount=10%
      - --price=$5
      - 'say "hi"'
      - it's
      - 'C:\path'
      - a;b
      - ""
    env:
      GREETING: hello world
      PASSWORD: pa$word%
      QUOTED: 'say "hi" and it''s'
      WINDOWS: 'C:\dir'
      PEM: "line one\nline two"
      PLAIN: plain
      HOME_REF: $HOME and ${HOME}
    after: [db, cache]
    ports:
      - {name: http, guest: 8080, host: 26701}
      - {guest: 9090}
    health: {http: {port: 8080, path: /health}}
  worker:
    run: [/usr/local/bin/shop, work]
    after: [api]
    health: {http: {port: 8081, path: /ready, status: 204}}
bake:
  - {name: migrate, run: [/usr/local/bin/shop, migrate]}
`

const minimalYAML = `
name: tiny
`

// parse builds a stack the way emu does, from a stack file in a temp dir.
func parse(t *testing.T, yaml string) *spec.Stack {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := spec.Parse([]byte(yaml), filepath.Join(dir, "emu.yaml"))
	if err != nil {
		t.Fatalf("spec.Parse: %v", err)
	}
	return s
}

// listing renders files as one text: a header line per file with its mode
// or link target, then its content.
func listing(files []File) string {
	var b strings.Builder
	for _, f := range files {
		if f.Link != "" {
			fmt.Fprintf(&b, "=== %s -> %s\n", f.Path, f.Link)
			continue
		}
		fmt.Fprintf(&b, "=== %s (%04o)\n", f.Path, uint32(f.Mode.Perm()))
		b.Write(f.Data)
		if len(f.Data) > 0 && f.Data[len(f.Data)-1] != '\n' {
			b.WriteString("\n\\ no newline at end of file\n")
		}
	}
	return b.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/guest -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range []struct{ name, yaml string }{
		{"demo", demoYAML},
		{"minimal", minimalYAML},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, err := Render(parse(t, tc.yaml), nil)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			golden(t, "render-"+tc.name, listing(files))

			seen := map[string]bool{}
			for i, f := range files {
				if i > 0 && files[i-1].Path >= f.Path {
					t.Errorf("files not sorted by path, or duplicated: %s then %s", files[i-1].Path, f.Path)
				}
				if seen[f.Path] {
					t.Errorf("%s rendered twice", f.Path)
				}
				seen[f.Path] = true
				if !filepath.IsAbs(f.Path) || filepath.Clean(f.Path) != f.Path {
					t.Errorf("path %q is not clean and absolute", f.Path)
				}
				if f.Link == "" && f.Mode == 0 {
					t.Errorf("%s has no mode", f.Path)
				}
			}
		})
	}
}

func TestRenderSkipsUnitServices(t *testing.T) {
	files, err := Render(parse(t, demoYAML), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.Contains(f.Path, "postgresql") {
			t.Errorf("rendered %s for a service that names a unit of the base", f.Path)
		}
	}
}

func TestCmdline(t *testing.T) {
	for _, tc := range []struct {
		mode proto.Mode
		arch string
		want string
	}{
		{proto.Provision, "amd64", "root=/dev/vda rw console=ttyS0 panic=-1 loglevel=4 net.ifnames=0 systemd.show_status=error systemd.firstboot=off emu.mode=provision"},
		{proto.Run, "amd64", "root=/dev/vda rw console=ttyS0 panic=-1 loglevel=4 net.ifnames=0 systemd.show_status=error systemd.firstboot=off emu.mode=run"},
		{proto.Run, "arm64", "root=/dev/vda rw console=ttyAMA0 panic=-1 loglevel=4 net.ifnames=0 systemd.show_status=error systemd.firstboot=off emu.mode=run"},
	} {
		t.Run(string(tc.mode)+"/"+tc.arch, func(t *testing.T) {
			if got := Cmdline(tc.mode, tc.arch); got != tc.want {
				t.Errorf("Cmdline(%s, %s) =\n  %s\nwant\n  %s", tc.mode, tc.arch, got, tc.want)
			}
		})
	}
}

func TestUnitName(t *testing.T) {
	for _, tc := range []struct {
		name string
		svc  spec.Service
		want string
	}{
		{"api", spec.Service{Run: []string{"/bin/api"}}, "emu-api.service"},
		{"db", spec.Service{Unit: "postgresql.service"}, "postgresql.service"},
		{"my-svc", spec.Service{}, "emu-my-svc.service"},
	} {
		if got := UnitName(tc.name, tc.svc); got != tc.want {
			t.Errorf("UnitName(%q, %+v) = %q, want %q", tc.name, tc.svc, got, tc.want)
		}
	}
}

func TestQuote(t *testing.T) {
	for _, tc := range []struct {
		in, exec, env string
	}{
		{"plain", "plain", "plain"},
		{"/usr/bin/x", "/usr/bin/x", "/usr/bin/x"},
		{"", `""`, `""`},
		{"hello world", `"hello world"`, `"hello world"`},
		{"tab\there", "\"tab\there\"", "\"tab\there\""},
		{"100%", "100%%", "100%%"},
		{"%n", "%%n", "%%n"},
		{"$5", "$$5", "$5"},
		{"${HOME} $HOME", `"$${HOME} $$HOME"`, `"${HOME} $HOME"`},
		{`say "hi"`, `"say \"hi\""`, `"say \"hi\""`},
		{"it's", `"it's"`, `"it's"`},
		{`C:\dir`, `"C:\\dir"`, `"C:\\dir"`},
		{"a;b", `"a;b"`, `"a;b"`},
		{";", `";"`, `";"`},
		{"two\nlines\r", `"two\nlines\r"`, `"two\nlines\r"`},
		{`50% of "$x" \o/`, `"50%% of \"$$x\" \\o/"`, `"50%% of \"$x\" \\o/"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := quote(tc.in); got != tc.exec {
				t.Errorf("quote(%q) = %s, want %s", tc.in, got, tc.exec)
			}
			if got := quoteEnv(tc.in); got != tc.env {
				t.Errorf("quoteEnv(%q) = %s, want %s", tc.in, got, tc.env)
			}
		})
	}
}

func TestExecLine(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"/bin/app"}, "/bin/app"},
		{[]string{"/bin/app", "serve", "--addr", ":8080"}, "/bin/app serve --addr :8080"},
		{[]string{"/opt/my app/bin", "a b", ""}, `"/opt/my app/bin" "a b" ""`},
		{[]string{"/bin/sh", "-c", `echo "$HOME" 100% done`}, `/bin/sh -c "echo \"$$HOME\" 100%% done"`},
	} {
		if got := execLine(tc.argv); got != tc.want {
			t.Errorf("execLine(%q) = %s, want %s", tc.argv, got, tc.want)
		}
	}
}

// TestQuoteRoundTrip reads quoted words back the way systemd does, and
// checks each comes back as it was.
func TestQuoteRoundTrip(t *testing.T) {
	words := []string{
		"", "plain", "hello world", "  lead and trail  ", "tab\tin", "100%", "%%", "%n%i",
		"$", "$$", "$HOME", "${HOME}", `say "hi"`, "it's", `'single'`, `C:\dir\`, `\\`, `\n`,
		"a;b", ";", "line one\nline two", "cr\r", "ünïcödé ✓", `50% of "$x" \o/`,
	}
	for _, w := range words {
		t.Run(w, func(t *testing.T) {
			got, err := systemdWords(quote(w), true)
			if err != nil || len(got) != 1 || got[0] != w {
				t.Errorf("ExecStart word %q: quoted %s, read back as %q (%v)", w, quote(w), got, err)
			}
			assign := "K=" + w
			got, err = systemdWords(quoteEnv(assign), false)
			if err != nil || len(got) != 1 || got[0] != assign {
				t.Errorf("Environment %q: quoted %s, read back as %q (%v)", assign, quoteEnv(assign), got, err)
			}
		})
	}
	line := execLine(words)
	got, err := systemdWords(line, true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(words, got); diff != "" {
		t.Errorf("execLine read back (-want +got):\n%s", diff)
	}
}

// systemdWords splits a unit file value into words as systemd reads
// ExecStart= (dollar true) and Environment= (dollar false): blanks separate
// words, double and single quotes group, C escapes are unescaped; then "%%"
// is a literal "%", and in ExecStart= "$$" a literal "$". A "%" or "$" that
// systemd would expand is an error: the word would not come back as given.
// A raw line break is an error too: it would end the unit file line.
func systemdWords(s string, dollar bool) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\n' || c == '\r':
			return nil, errors.New("raw line break in value")
		case q == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case q == 0 && (c == '"' || c == '\''):
			q, inWord = c, true
		case q != 0 && c == q:
			q = 0
		case c == '\\' && q != '\'':
			i++
			if i == len(s) {
				return nil, errors.New("trailing backslash")
			}
			switch s[i] {
			case 'n':
				cur.WriteByte('\n')
			case 'r':
				cur.WriteByte('\r')
			case 't':
				cur.WriteByte('\t')
			case '\\', '"', '\'', ' ':
				cur.WriteByte(s[i])
			default:
				return nil, fmt.Errorf("unsupported escape \\%c", s[i])
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if q != 0 {
		return nil, errors.New("unterminated quote")
	}
	if inWord {
		words = append(words, cur.String())
	}
	for i, w := range words {
		var err error
		if words[i], err = unescapeSpecial(w, '%'); err != nil {
			return nil, err
		}
		if dollar {
			if words[i], err = unescapeSpecial(words[i], '$'); err != nil {
				return nil, err
			}
		}
	}
	return words, nil
}

// unescapeSpecial turns each doubled c into one, and rejects a single c,
// which systemd would expand.
func unescapeSpecial(w string, c byte) (string, error) {
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		if w[i] != c {
			b.WriteByte(w[i])
			continue
		}
		if i+1 < len(w) && w[i+1] == c {
			b.WriteByte(c)
			i++
			continue
		}
		return "", fmt.Errorf("%q would be expanded in %q", c, w)
	}
	return b.String(), nil
}

func TestAgentConfig(t *testing.T) {
	got := AgentConfig(parse(t, demoYAML))
	want := proto.Config{Stack: "shop", Services: []proto.Service{
		{
			Name: "cache", Unit: "emu-cache.service",
			Health:     proto.Health{Exec: []string{"/usr/bin/valkey-cli", "ping"}, Timeout: 30 * time.Second},
			RuntimeEnv: true,
		},
		{
			Name: "db", Unit: "postgresql.service",
			Health: proto.Health{TCP: 5432, Timeout: 3 * time.Minute},
		},
		{
			Name: "api", Unit: "emu-api.service", After: []string{"db", "cache"},
			Health:     proto.Health{HTTPPort: 8080, HTTPPath: "/health", HTTPStatus: 200, Timeout: 2 * time.Minute},
			Ports:      []string{"http=8080", "9090=9090"},
			RuntimeEnv: true,
		},
		{
			Name: "worker", Unit: "emu-worker.service", After: []string{"api"},
			Health:     proto.Health{HTTPPort: 8081, HTTPPath: "/ready", HTTPStatus: 204, Timeout: 2 * time.Minute},
			RuntimeEnv: true,
		},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("AgentConfig (-want +got):\n%s", diff)
	}

	if got := AgentConfig(parse(t, minimalYAML)); !cmp.Equal(proto.Config{Stack: "tiny"}, got) {
		t.Errorf("AgentConfig(no services) = %+v", got)
	}
}

func TestWrite(t *testing.T) {
	s := parse(t, demoYAML)
	files, err := Render(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	// A stale file where a link goes, and a file with the wrong mode.
	stale := filepath.Join(root, "etc/systemd/system/getty@.service")
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Twice: writing over an earlier write is fine.
	for range 2 {
		if err := Write(root, files); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	for _, f := range files {
		dst := filepath.Join(root, f.Path)
		fi, err := os.Lstat(dst)
		if err != nil {
			t.Errorf("%s: %v", f.Path, err)
			continue
		}
		if f.Link != "" {
			target, err := os.Readlink(dst)
			if err != nil || target != f.Link {
				t.Errorf("%s: link to %q (%v), want %q", f.Path, target, err, f.Link)
			}
			continue
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != f.Mode.Perm() {
			t.Errorf("%s: mode %v, want a regular file with %v", f.Path, fi.Mode(), f.Mode)
		}
		data, err := os.ReadFile(dst)
		if err != nil || string(data) != string(f.Data) {
			t.Errorf("%s: content %q (%v), want %q", f.Path, data, err, f.Data)
		}
	}

	// The agent reads back the config the host wrote.
	cfg, err := agent.LoadConfig(filepath.Join(root, proto.ConfigPath))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(AgentConfig(s), cfg); diff != "" {
		t.Errorf("agent config read back (-rendered +read):\n%s", diff)
	}

	// Nothing else was written.
	var extra []string
	want := map[string]bool{"etc/systemd/system/getty@.service": true, "etc/hostname": true}
	for _, f := range files {
		want[strings.TrimPrefix(f.Path, "/")] = true
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if !want[rel] {
			extra = append(extra, rel)
		}
		return nil
	})
	if err != nil || len(extra) > 0 {
		t.Errorf("Write left extra files %v (%v)", extra, err)
	}
}

func TestWriteModes(t *testing.T) {
	root := t.TempDir()
	files := []File{
		{Path: "/a/b/secret", Mode: 0o600, Data: []byte("s")},
		{Path: "/a/exe", Mode: 0o755, Data: []byte("#!/bin/sh\n")},
		{Path: "/a/shared", Mode: 0o666, Data: nil},
		{Path: "/a/link", Link: "b/secret"},
	}
	if err := Write(root, files); err != nil {
		t.Fatal(err)
	}
	for _, f := range files[:3] {
		fi, err := os.Stat(filepath.Join(root, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		// 0666 too, whatever the umask: Write sets the mode it was given.
		if fi.Mode().Perm() != f.Mode {
			t.Errorf("%s: mode %v, want %v", f.Path, fi.Mode().Perm(), f.Mode)
		}
	}
	if data, err := os.ReadFile(filepath.Join(root, "a/link")); err != nil || string(data) != "s" {
		t.Errorf("relative link: %q, %v", data, err)
	}
}

func TestWriteError(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "etc"), []byte("a file, not a dir"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Write(root, []File{{Path: "/etc/hostname", Mode: 0o644, Data: []byte("x\n")}})
	if err == nil || !strings.Contains(err.Error(), "write guest file /etc/hostname") {
		t.Errorf("Write under a file = %v, want an error naming the guest path", err)
	}
}
