package ports

import (
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/google/go-cmp/cmp"
)

func TestParseOverride(t *testing.T) {
	tests := []struct {
		in      string
		want    Override
		wantErr string
	}{
		{in: "api.http=28080", want: Override{Key: "api.http", Host: 28080}},
		{in: "http=28080", want: Override{Key: "http", Host: 28080}},
		{in: "postgres=25432", want: Override{Key: "postgres", Host: 25432}},
		{in: "api.8080=18080", want: Override{Key: "api.8080", Host: 18080}},
		{in: "API.Http=1", want: Override{Key: "api.http", Host: 1}},
		{in: "api.http", wantErr: `parse port override "api.http": want KEY=PORT`},
		{in: "=80", wantErr: `parse port override "=80": invalid key ""`},
		{in: "a.b.c=80", wantErr: `invalid key "a.b.c"`},
		{in: "api.=80", wantErr: `invalid key "api."`},
		{in: "a_b=80", wantErr: `invalid key "a_b"`},
		{in: "api=http", wantErr: `parse port override "api=http": invalid port "http": want a number from 1 to 65535`},
		{in: "api=0", wantErr: `parse port override "api=0": port 0 out of range 1..65535`},
		{in: "api=65536", wantErr: `port 65536 out of range 1..65535`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseOverride(tt.in)
			if !errContains(t, err, tt.wantErr) {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseOverride(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    []Override
		wantErr []string
	}{
		{
			name:    "none",
			environ: []string{"HOME=/root", "EMU_HOME=/x", "PATH=/bin"},
		},
		{
			name:    "sorted so the specific one comes last",
			environ: []string{"EMU_PORT_API_HTTP=28080", "HOME=/root", "EMU_PORT_API=28000", "EMU_PORT_MY_DB=25432"},
			want: []Override{
				{Key: "API", Host: 28000, Env: "EMU_PORT_API"},
				{Key: "API_HTTP", Host: 28080, Env: "EMU_PORT_API_HTTP"},
				{Key: "MY_DB", Host: 25432, Env: "EMU_PORT_MY_DB"},
			},
		},
		{
			name:    "lower case accepted",
			environ: []string{"EMU_PORT_api=1"},
			want:    []Override{{Key: "API", Host: 1, Env: "EMU_PORT_api"}},
		},
		{
			name:    "every bad variable named",
			environ: []string{"EMU_PORT_API=x", "EMU_PORT_=80", "EMU_PORT_A-B=80", "EMU_PORT_DB=70000", "EMU_PORT_OK=80"},
			wantErr: []string{
				`read EMU_PORT_API: invalid port "x"`,
				`read EMU_PORT_: want EMU_PORT_SERVICE_NAME or EMU_PORT_SERVICE`,
				`read EMU_PORT_A-B: want`,
				`read EMU_PORT_DB: port 70000 out of range 1..65535`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromEnv(tt.environ)
			if !errContainsAll(t, err, tt.wantErr) {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("FromEnv (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	stack := []Service{
		{Name: "api", Ports: []spec.Port{{Name: "http", Guest: 8080, Host: 26701}, {Name: "admin", Guest: 9090}}},
		{Name: "web-ui", Ports: []spec.Port{{Name: "http", Guest: 3000}}},
		{Name: "postgres", Ports: []spec.Port{{Guest: 5432}}},
	}
	defaults := []proto.Forward{
		{Service: "api", Name: "http", Guest: 8080, Host: 26701},
		{Service: "api", Name: "admin", Guest: 9090, Host: 9090},
		{Service: "web-ui", Name: "http", Guest: 3000, Host: 3000},
		{Service: "postgres", Name: "5432", Guest: 5432, Host: 5432},
	}
	with := func(changes map[string]int) []proto.Forward {
		out := append([]proto.Forward(nil), defaults...)
		for i := range out {
			if h, ok := changes[out[i].Key()]; ok {
				out[i].Host = h
			}
		}
		return out
	}
	flag := func(key string, host int) Override { return Override{Key: key, Host: host} }
	env := func(key string, host int) Override { return Override{Key: key, Host: host, Env: EnvPrefix + key} }

	tests := []struct {
		name      string
		services  []Service
		overrides []Override
		want      []proto.Forward
		wantErr   []string
	}{
		{name: "defaults", services: stack, want: defaults},
		{name: "no services"},
		{
			name:      "flag keys: service.name, service, unique name, guest number",
			services:  stack,
			overrides: []Override{flag("api.http", 1), flag("postgres", 2), flag("admin", 3), flag("web-ui.http", 4)},
			want:      with(map[string]int{"api.http": 1, "postgres.5432": 2, "api.admin": 3, "web-ui.http": 4}),
		},
		{
			name:      "unnamed port by guest number",
			services:  stack,
			overrides: []Override{flag("postgres.5432", 15432)},
			want:      with(map[string]int{"postgres.5432": 15432}),
		},
		{
			name:      "env keys",
			services:  stack,
			overrides: []Override{env("API_HTTP", 1), env("WEB_UI", 2), env("POSTGRES_5432", 3)},
			want:      with(map[string]int{"api.http": 1, "web-ui.http": 2, "postgres.5432": 3}),
		},
		{
			name:      "flag beats env",
			services:  stack,
			overrides: []Override{env("API_HTTP", 28080), flag("api.http", 38080)},
			want:      with(map[string]int{"api.http": 38080}),
		},
		{
			name:      "override moves a port out of a collision",
			services:  []Service{{Name: "a", Ports: []spec.Port{{Guest: 80}}}, {Name: "b", Ports: []spec.Port{{Guest: 80}}}},
			overrides: []Override{flag("b", 8080)},
			want:      []proto.Forward{{Service: "a", Name: "80", Guest: 80, Host: 80}, {Service: "b", Name: "80", Guest: 80, Host: 8080}},
		},
		{
			name:      "unknown keys, every one named",
			services:  stack,
			overrides: []Override{flag("redis", 1), flag("api.grpc", 2), env("API_GRPC", 3)},
			wantErr: []string{
				`--port redis=1: no port matches "redis" (ports: api.http, api.admin, web-ui.http, postgres.5432)`,
				`--port api.grpc=2: no port matches "api.grpc"`,
				`EMU_PORT_API_GRPC=3: no port matches "API_GRPC"`,
			},
		},
		{
			name:      "no ports at all",
			overrides: []Override{flag("api", 1)},
			wantErr:   []string{`--port api=1: no port matches "api": the stack forwards no ports`},
		},
		{
			name:      "ambiguous keys",
			services:  stack,
			overrides: []Override{flag("http", 1), flag("api", 2), env("API", 3)},
			wantErr: []string{
				`--port http=1: "http" matches several ports (api.http, web-ui.http): name one as SERVICE.NAME`,
				`--port api=2: "api" matches several ports (api.http, api.admin)`,
				`EMU_PORT_API=3: "API" matches several ports (api.http, api.admin)`,
			},
		},
		{
			name:      "collision from an override",
			services:  stack,
			overrides: []Override{flag("web-ui", 26701)},
			wantErr:   []string{`host port 26701 is used by both api (http) and web-ui (http): give one another port with --port web-ui.http=PORT`},
		},
		{
			name:     "collision in the stack file",
			services: []Service{{Name: "a", Ports: []spec.Port{{Guest: 80}}}, {Name: "b", Ports: []spec.Port{{Guest: 81, Host: 80}}}},
			wantErr:  []string{`host port 80 is used by both a (80) and b (81)`},
		},
		{
			name: "bad ports",
			services: []Service{{Name: "a", Ports: []spec.Port{
				{Name: "g", Guest: 0}, {Name: "h", Guest: 80, Host: 70000}, {Name: "n", Guest: -1, Host: 81},
			}}},
			overrides: []Override{flag("a.n", 0)},
			wantErr: []string{
				`a (g): guest port 0 out of range 1..65535`,
				`a (h): host port 70000 out of range 1..65535`,
				`a (n): guest port -1 out of range 1..65535`,
				`--port a.n=0: port 0 out of range 1..65535`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Plan(tt.services, tt.overrides)
			if !errContainsAll(t, err, tt.wantErr) {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Plan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFromStack(t *testing.T) {
	st := &spec.Stack{Services: map[string]spec.Service{
		"web": {Ports: []spec.Port{{Name: "http", Guest: 80, Host: 8080}}},
		"api": {Ports: []spec.Port{{Guest: 9000, Host: 9000}}},
		"job": {},
	}}
	want := []Service{
		{Name: "api", Ports: []spec.Port{{Guest: 9000, Host: 9000}}},
		{Name: "web", Ports: []spec.Port{{Name: "http", Guest: 80, Host: 8080}}},
	}
	if diff := cmp.Diff(want, FromStack(st)); diff != "" {
		t.Errorf("FromStack (-want +got):\n%s", diff)
	}
}

// errContains checks err against want ("" for no error) and reports whether
// the test should go on to check the result.
func errContains(t *testing.T, err error, want string) bool {
	t.Helper()
	if want == "" {
		return errContainsAll(t, err, nil)
	}
	return errContainsAll(t, err, []string{want})
}

func errContainsAll(t *testing.T, err error, want []string) bool {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return true
	}
	if err == nil {
		t.Fatalf("no error; want one containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\ndoes not contain %q", err, w)
		}
	}
	if n := len(strings.Split(err.Error(), "\n")); n != len(want) {
		t.Errorf("error has %d lines, want %d:\n%v", n, len(want), err)
	}
	return false
}
