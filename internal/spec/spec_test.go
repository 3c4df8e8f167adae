package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestLoadDemo(t *testing.T) {
	s, err := Load("testdata/good/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("testdata/good/demo.yaml")
	want := &Stack{
		Name:  "demo",
		Base:  Base{Suite: "trixie", Packages: []string{"postgresql", "valkey-server"}, Kernel: DefaultKernel, Arch: "amd64"},
		VM:    VM{CPUs: 2, Memory: 2 * GiB, Disk: 8 * GiB},
		Files: []File{{Src: "./bin/demo-api", Dst: "/usr/local/bin/demo-api", Mode: 0o755}},
		Services: map[string]Service{
			"postgres": {Unit: "postgresql.service", Health: Health{TCP: 5432, Timeout: DefaultHealthTimeout}},
			"valkey": {Unit: "valkey-server.service", Health: Health{
				Exec: []string{"/usr/bin/valkey-cli", "ping"}, Timeout: Duration(30 * time.Second)}},
			"api": {
				Run:   []string{"/usr/local/bin/demo-api", "serve"},
				Env:   map[string]string{"DATABASE_URL": "postgres://demo@127.0.0.1/demo"},
				After: []string{"postgres", "valkey"},
				Ports: []Port{{Guest: 8080, Host: 26701, Name: "http"}},
				Health: Health{HTTP: &HTTPHealth{Port: 8080, Path: "/health", Status: 200},
					Timeout: DefaultHealthTimeout},
			},
		},
		Bake: []Step{
			{Name: "migrate", Run: []string{"/usr/local/bin/demo-api", "migrate"},
				Env: map[string]string{"ADMIN_PASSWORD": "build-time only"}, Timeout: Duration(5 * time.Minute)},
			{Name: "seed", Run: []string{"/usr/local/bin/demo-api", "seed", "--fixtures", "/srv/fixtures"},
				Dir: "/srv", Timeout: DefaultStepTimeout},
		},
		Slim: Slim{Remove: []string{"/usr/share/doc", "/usr/share/man", "/var/cache/apt"}},
		Path: abs,
		Dir:  filepath.Dir(abs),
	}
	if diff := cmp.Diff(want, s, cmpopts.IgnoreUnexported(Stack{})); diff != "" {
		t.Errorf("Load (-want +got):\n%s", diff)
	}
	if got, want := s.FilePath(s.Files[0]), filepath.Join(filepath.Dir(abs), "bin", "demo-api"); got != want {
		t.Errorf("FilePath = %q, want %q", got, want)
	}
	if diff := cmp.Diff([]string{"postgres", "valkey", "api"}, s.StartOrder()); diff != "" {
		t.Errorf("StartOrder (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"api", "postgres", "valkey"}, s.ServiceNames()); diff != "" {
		t.Errorf("ServiceNames (-want +got):\n%s", diff)
	}
}

func TestParseGood(t *testing.T) {
	tests := []struct {
		name string
		yaml string
	}{
		{"minimal", "name: demo\n"},
		{"digits and dashes", "name: 0-demo-9\n"},
		{"null sections", "name: demo\nbase:\nvm:\nfiles:\nservices:\nbake:\nslim:\n"},
		{"arm64", "name: demo\nbase: {arch: arm64}\n"},
		{"size as number", "name: demo\nvm: {memory: 1073741824, disk: 2G}\n"},
		{"absolute file source", "name: demo\nfiles: [{src: " + mustAbs(t, "testdata/good/bin/demo-api") + ", dst: /app}]\n"},
		{"mode as octal number", "name: demo\nfiles: [{src: bin/demo-api, dst: /app, mode: 0644}]\n"},
		{"unit service", "name: demo\nservices: {pg: {unit: postgresql.service, health: {tcp: 5432}}}\n"},
		{"exec health", "name: demo\nservices: {pg: {unit: postgresql.service, health: {exec: [pg_isready]}}}\n"},
		{"same guest port different services", "name: demo\nservices:\n" +
			"  a: {run: [/a], ports: [{guest: 80, host: 8001}], health: {tcp: 80}}\n" +
			"  b: {run: [/b], ports: [{guest: 80, host: 8002}], health: {tcp: 80}}\n"},
		{"diamond", "name: demo\nservices:\n" +
			"  a: {run: [/a], health: {tcp: 1}}\n" +
			"  b: {run: [/b], after: [a], health: {tcp: 2}}\n" +
			"  c: {run: [/c], after: [a], health: {tcp: 3}}\n" +
			"  d: {run: [/d], after: [b, c], health: {tcp: 4}}\n"},
		{"slim", "name: demo\nslim: {remove: [/usr/share/doc, /usr/local/share, /etc/emulator]}\n"},
		{"anchors", "name: demo\nx-env: &env {A: b}\n"[:11] + "services:\n  a: {run: [/a], env: &env {A: b}, health: {tcp: 1}}\n  b: {run: [/b], env: *env, health: {tcp: 2}}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse([]byte(tt.yaml), "testdata/good/emu.yaml"); err != nil {
				t.Errorf("Parse:\n%v", err)
			}
		})
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// TestParseBad loads every testdata/bad/*.yaml; each names the error it must
// produce in a last line "# want: SUBSTRING", or in a sibling .want file.
func TestParseBad(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 30 {
		t.Fatalf("only %d bad inputs", len(files))
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			want := wantOf(t, f)
			s, err := Load(f)
			if err == nil {
				t.Fatalf("Load = %+v, want error containing %q", s, want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Load error:\n%v\nwant it to contain %q", err, want)
			}
			if !strings.HasPrefix(err.Error(), f) {
				t.Errorf("Load error %q does not start with the file name", err)
			}
			if strings.Contains(err.Error(), ": yaml: ") || strings.Contains(err.Error(), "failed to") {
				t.Errorf("Load error %q reads badly", err)
			}
		})
	}
}

func wantOf(t *testing.T, f string) string {
	t.Helper()
	if b, err := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".want"); err == nil {
		return strings.TrimSpace(string(b))
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	want, ok := strings.CutPrefix(lines[len(lines)-1], "# want: ")
	if !ok {
		t.Fatalf("%s: last line is not # want: SUBSTRING", f)
	}
	return want
}

func TestAllProblemsAtOnce(t *testing.T) {
	const y = `name: Bad_Name
base: {arch: sparc}
vm: {cpus: 0, memory: 1MiB}
files:
  - {src: nope, dst: relative}
services:
  api:
    run: [api]
    after: [db]
    ports: [{guest: 80}]
  web:
    unit: web.service
    ports: [{guest: 80}]
    health: {tcp: 80}
bake:
  - {name: seed}
slim: {remove: [/]}
`
	_, err := Parse([]byte(y), "testdata/good/emu.yaml")
	if err == nil {
		t.Fatal("Parse: no error")
	}
	wants := []string{
		`emu.yaml:1: name: invalid name "Bad_Name"`,
		`emu.yaml:2: base.arch: unsupported arch "sparc"`,
		`emu.yaml:3: vm.memory: memory 1MiB too small`,
		`emu.yaml:5: files[0].src: source nope does not exist`,
		`emu.yaml:5: files[0].dst: guest path "relative" is not absolute`,
		`emu.yaml:8: services.api.run[0]: command "api" is not an absolute path`,
		`emu.yaml:9: services.api.after[0]: unknown service "db"`,
		`emu.yaml:7: services.api.health: required: set one of tcp, http or exec`,
		`emu.yaml:13: services.web.ports[0].host: host port 80 already used by services.api.ports[0]`,
		`emu.yaml:16: bake[0].run: required`,
		`emu.yaml:17: slim.remove[0]: refusing to remove the root directory`,
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q", w)
		}
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != len(wants) {
		t.Errorf("got problems:\n%v\nwant %d of them", err, len(wants))
	}
	for _, e := range joined.Unwrap() {
		if !errors.Is(e, ErrInvalid) {
			t.Errorf("problem %q is not ErrInvalid", e)
		}
		var se *Error
		if !errors.As(e, &se) || se.Field == "" || se.Line == 0 {
			t.Errorf("problem %q lacks a field or line: %+v", e, se)
		}
	}
}

func TestDefaults(t *testing.T) {
	const y = `name: demo
services:
  api:
    run: [/app]
    ports: [{guest: 8080}, {guest: 9090, host: 19090}]
    health: {http: {port: 8080}}
bake:
  - {name: migrate, run: [/app, migrate]}
`
	s, err := Parse([]byte(y), "emu.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := struct {
		Base  Base
		VM    VM
		Svc   Service
		Steps []Step
	}{s.Base, s.VM, s.Services["api"], s.Bake}
	want := got
	want.Base = Base{Suite: "trixie", Kernel: "linux-image-cloud-amd64", Arch: "amd64"}
	want.VM = VM{CPUs: 2, Memory: 2 * GiB, Disk: 4 * GiB}
	want.Svc = Service{
		Run:    []string{"/app"},
		Ports:  []Port{{Guest: 8080, Host: 8080}, {Guest: 9090, Host: 19090}},
		Health: Health{HTTP: &HTTPHealth{Port: 8080, Path: "/", Status: 200}, Timeout: Duration(2 * time.Minute)},
	}
	want.Steps = []Step{{Name: "migrate", Run: []string{"/app", "migrate"}, Timeout: Duration(10 * time.Minute)}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if !filepath.IsAbs(s.Path) || filepath.Base(s.Path) != "emu.yaml" || filepath.Dir(s.Path) != s.Dir {
		t.Errorf("Path = %q, Dir = %q", s.Path, s.Dir)
	}
}

func TestStartOrder(t *testing.T) {
	tests := []struct {
		name  string
		after map[string][]string
		want  []string
	}{
		{"none", nil, nil},
		{"independent by name", map[string][]string{"c": nil, "a": nil, "b": nil}, []string{"a", "b", "c"}},
		{"chain", map[string][]string{"a": {"b"}, "b": {"c"}, "c": nil}, []string{"c", "b", "a"}},
		{"ties by name", map[string][]string{"web": {"db"}, "api": {"db"}, "db": nil, "cache": nil},
			[]string{"cache", "db", "api", "web"}},
		{"ready later sorts in", map[string][]string{"z": nil, "b": {"z"}, "y": nil}, []string{"y", "z", "b"}},
		{"diamond", map[string][]string{"d": {"b", "c"}, "b": {"a"}, "c": {"a"}, "a": nil}, []string{"a", "b", "c", "d"}},
		{"cycle last", map[string][]string{"a": {"b"}, "b": {"a"}, "c": nil}, []string{"c", "a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Stack{Services: map[string]Service{}}
			for n, after := range tt.after {
				s.Services[n] = Service{After: after}
			}
			got := s.StartOrder()
			if len(got) == 0 {
				got = nil
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("StartOrder (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "emu.yaml"))
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load: %v, want ErrInvalid and fs.ErrNotExist", err)
	}
	for _, w := range []string{"emu.yaml not found", "-f FILE"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Load: %v, want it to mention %q", err, w)
		}
	}
}

func TestValidateInCode(t *testing.T) {
	s := &Stack{Name: "demo"}
	s.setDefaults()
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	s.VM.CPUs = 100
	if err := s.Validate(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "vm.cpus") {
		t.Errorf("Validate: %v, want a vm.cpus problem", err)
	}
}

func TestSchema(t *testing.T) {
	var root map[string]any
	if err := json.Unmarshal(Schema(), &root); err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	if root["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema = %v", root["$schema"])
	}
	defs, _ := root["$defs"].(map[string]any)
	var check func(path string, typ reflect.Type, node map[string]any)
	resolve := func(node map[string]any) map[string]any {
		for {
			ref, ok := node["$ref"].(string)
			if !ok {
				return node
			}
			node, _ = defs[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any)
			if node == nil {
				t.Fatalf("dangling $ref %s", ref)
			}
		}
	}
	check = func(path string, typ reflect.Type, node map[string]any) {
		node = resolve(node)
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		switch typ.Kind() {
		case reflect.Slice:
			if items, ok := node["items"].(map[string]any); ok {
				check(path+"[]", typ.Elem(), items)
			}
		case reflect.Map:
			if ap, ok := node["additionalProperties"].(map[string]any); ok {
				check(path+".*", typ.Elem(), ap)
			}
		case reflect.Struct:
			props, _ := node["properties"].(map[string]any)
			if node["additionalProperties"] != false {
				t.Errorf("%s: schema allows unknown fields", path)
			}
			if d, _ := node["description"].(string); d == "" && path != "" {
				t.Errorf("%s: no description", path)
			}
			names := yamlFields(typ)
			for i := range typ.NumField() {
				f := typ.Field(i)
				name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
				if name == "" || name == "-" {
					continue
				}
				p, ok := props[name].(map[string]any)
				if !ok {
					t.Errorf("%s.%s: field missing from the schema", path, name)
					continue
				}
				if d, _ := p["description"].(string); d == "" {
					if r := resolve(p); r["description"] == nil {
						t.Errorf("%s.%s: no description", path, name)
					}
				}
				check(path+"."+name, f.Type, p)
			}
			if len(props) != len(names) {
				t.Errorf("%s: schema has %d properties, type has %d fields (%v)", path, len(props), len(names), names)
			}
		}
	}
	check("", reflect.TypeOf(Stack{}), root)
}

// TestDocs keeps the reference's full example and the demo in testdata equal.
func TestDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/stack-file.md")
	if err != nil {
		t.Fatal(err)
	}
	demo, err := os.ReadFile("testdata/good/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```yaml\n"+string(demo)+"```") {
		t.Error("docs/stack-file.md does not hold testdata/good/demo.yaml as its full example")
	}
	for name := range yamlTypes {
		for _, f := range yamlFields(yamlTypes[name]) {
			if !strings.Contains(string(doc), "`"+f+"`") && !strings.Contains(string(doc), "."+f+"`") {
				t.Errorf("docs/stack-file.md does not mention field `%s` of %s", f, name)
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, glob := range []string{"testdata/bad/*.yaml", "testdata/good/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data, "testdata/good/emu.yaml")
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			return
		}
		if s == nil {
			t.Fatal("Parse returned nil, nil")
		}
		if len(s.StartOrder()) != len(s.Services) {
			t.Errorf("StartOrder %v misses services", s.StartOrder())
		}
		if err := s.Validate(); err != nil {
			t.Errorf("Validate after Parse: %v", err)
		}
	})
}

// Hostile sizes end fast and small: a 22 MB stack file (400,000 services)
// is refused before it is read, an alias bomb inside a valid field before
// it is expanded. The bounds are generous; the figures are milliseconds.
func TestHostileInputBounded(t *testing.T) {
	dir := t.TempDir()
	var big strings.Builder
	big.WriteString("name: big\nservices:\n")
	for i := range 400000 {
		fmt.Fprintf(&big, "  s%d: {unit: s%d.service, health: {tcp: %d}}\n", i, i, 1000+i%60000)
	}
	bigPath := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(bigPath, []byte(big.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	bomb, err := os.ReadFile("testdata/bad/alias-bomb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		load func() error
		want string
	}{
		{"22 MB file", func() error { _, err := Load(bigPath); return err }, "at most 1048576 (1 MiB)"},
		{"22 MB in memory", func() error { _, err := Parse([]byte(big.String()), bigPath); return err }, "at most 1048576 (1 MiB)"},
		{"alias bomb", func() error { _, err := Parse(bomb, "bomb.yaml"); return err }, "holds more than 1000000 values"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			err := tc.load()
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want %q", err, tc.want)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("refused in %s, %d KiB allocated", took, alloc>>10)
			if took > 5*time.Second {
				t.Errorf("took %s to refuse", took)
			}
			if alloc > 64<<20 {
				t.Errorf("allocated %d MiB to refuse", alloc>>20)
			}
		})
	}
}

// The largest stack the bounds allow loads in time linear in its size: 256
// services of 256 env entries each (the YAML library compares a mapping's
// keys pairwise, which the mapping bound caps).
func TestLargestStackLoads(t *testing.T) {
	var b strings.Builder
	b.WriteString("name: wide\nservices:\n")
	for i := range MaxMappingEntries {
		fmt.Fprintf(&b, "  s%d: {unit: s%d.service, health: {tcp: %d}, env: {", i, i, 1000+i)
		for j := range MaxMappingEntries {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "K%d: v", j)
		}
		b.WriteString("}}\n")
	}
	start := time.Now()
	s, err := Parse([]byte(b.String()), "testdata/good/emu.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d bytes, %d services: loaded in %s", b.Len(), len(s.Services), time.Since(start))
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("took %s", took)
	}
	if got := len(s.StartOrder()); got != MaxMappingEntries {
		t.Errorf("StartOrder has %d services", got)
	}
}

// Every connect problem is reported at once, each with its line.
func TestConnectErrors(t *testing.T) {
	_, err := Load("testdata/bad/connect-unknown.yaml")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`:8: connect.API_URL: ${ports.api.grpc}: service api has no port "grpc" (it has: http)`,
		`:9: connect.DB: ${ports.db.sql}: unknown service "db" (services: api)`,
		`:10: connect.1BAD: "1BAD" is not a variable name`,
		`:11: connect.OPEN: unclosed ${`,
		`:12: connect.WHAT: unknown reference ${host}: want ${ports.SERVICE.NAME} or ${instance}`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestExpandConnect(t *testing.T) {
	v := ConnectValues{Instance: "demo", Ports: map[string]int{"postgres.sql": 26702, "api.8080": 26701}}
	for _, tc := range []struct{ tmpl, want, err string }{
		{"postgres://demo@127.0.0.1:${ports.postgres.sql}/demo", "postgres://demo@127.0.0.1:26702/demo", ""},
		{"http://127.0.0.1:${ports.api.8080}/${instance}", "http://127.0.0.1:26701/demo", ""},
		{"cost: $$5, $HOME stays", "cost: $5, $HOME stays", ""},
		{"${ports.api.http}", "", "${ports.api.http} has no value"},
	} {
		got, err := ExpandConnect(tc.tmpl, v)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ExpandConnect(%q) = %q, %v; want error %q", tc.tmpl, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ExpandConnect(%q) = %q, %v; want %q", tc.tmpl, got, err, tc.want)
		}
	}
}
