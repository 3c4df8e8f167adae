package ports

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/emu-dev/emu/internal/proto"
)

func TestInUseErrorText(t *testing.T) {
	f := proto.Forward{Service: "api", Name: "http", Guest: 8080, Host: 26701}
	tests := []struct {
		name string
		err  *InUseError
		want string
	}{
		{
			name: "holder",
			err:  &InUseError{Forward: f, Holder: &Holder{PID: 1234, Command: "python3 -m http.server"}},
			want: "port 127.0.0.1:26701 for api (http) is already in use by pid 1234 (python3 -m http.server)",
		},
		{
			name: "no holder",
			err:  &InUseError{Forward: f, HolderErr: errors.New("not supported on darwin")},
			want: "port 127.0.0.1:26701 for api (http) is already in use (the holder could not be found: not supported on darwin)",
		},
		{
			name: "bare",
			err:  &InUseError{Forward: f},
			want: "port 127.0.0.1:26701 for api (http) is already in use",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q\nwant      %q", got, tt.want)
			}
			if got, want := tt.err.HintText(), "stop it, or pick another port: emu up --port api.http=PORT"; got != want {
				t.Errorf("HintText() = %q, want %q", got, want)
			}
		})
	}
}

func listen(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func TestCheck(t *testing.T) {
	taken1, taken2 := listen(t), listen(t)
	free := freePort(t)
	forwards := []proto.Forward{
		{Service: "api", Name: "http", Guest: 8080, Host: taken1},
		{Service: "web", Name: "http", Guest: 80, Host: free},
		{Service: "db", Name: "5432", Guest: 5432, Host: taken2},
	}
	err := Check(forwards)
	if err == nil {
		t.Fatal("Check: no error; want ports in use")
	}
	var got []*InUseError
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var iu *InUseError
		if !errors.As(e, &iu) {
			t.Fatalf("error %v is not an *InUseError", e)
		}
		got = append(got, iu)
	}
	if len(got) != 2 || got[0].Forward != forwards[0] || got[1].Forward != forwards[2] {
		t.Fatalf("Check reported %v; want the api and db ports", err)
	}
	for _, iu := range got {
		if !errors.Is(iu, syscall.EADDRINUSE) {
			t.Errorf("%v does not wrap EADDRINUSE: %v", iu, iu.Err)
		}
		if runtime.GOOS != "linux" {
			continue
		}
		if iu.Holder == nil {
			t.Errorf("%v: no holder", iu)
			continue
		}
		if iu.Holder.PID != os.Getpid() {
			t.Errorf("holder pid = %d, want this test's %d", iu.Holder.PID, os.Getpid())
		}
		if exe := os.Args[0]; !strings.Contains(iu.Holder.Command, exe) {
			t.Errorf("holder command = %q, want it to contain %q", iu.Holder.Command, exe)
		}
	}
	if err := Check(forwards[1:2]); err != nil {
		t.Errorf("Check of a free port: %v", err)
	}
}

// freePort returns a port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}
