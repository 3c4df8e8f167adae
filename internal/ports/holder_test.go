package ports

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const tcpHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
const tcp6Header = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

// tcpLine is a /proc/net/tcp line for a socket on addr:port in state st.
func tcpLine(addr string, port int, st, inode string) string {
	return "   0: " + procAddr(t4or6(addr)) + ":" + hex4(port) + " 00000000:0000 " + st +
		" 00000000:00000000 00:00000000 00000000     0        0 " + inode + " 1 0000000000000000 100 0 0 10 0\n"
}

func t4or6(s string) netip.Addr { return netip.MustParseAddr(s) }

// procAddr renders addr as the kernel does: 32-bit words in host byte order.
func procAddr(addr netip.Addr) string {
	raw := addr.AsSlice()
	var b strings.Builder
	for i := 0; i < len(raw); i += 4 {
		b.WriteString(strings.ToUpper(hexWord(binary.NativeEndian.Uint32(raw[i:]))))
	}
	return b.String()
}

func hexWord(v uint32) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		out[i] = digits[v&0xf]
		v >>= 4
	}
	return string(out)
}

func hex4(port int) string { return strings.ToUpper(hexWord(uint32(port))[4:]) }

type fakeProc struct {
	t    *testing.T
	root string
}

func newFakeProc(t *testing.T, tcp, tcp6 string) fakeProc {
	t.Helper()
	p := fakeProc{t: t, root: t.TempDir()}
	p.write("net/tcp", tcpHeader+tcp)
	p.write("net/tcp6", tcp6Header+tcp6)
	return p
}

func (p fakeProc) write(name, content string) {
	p.t.Helper()
	path := filepath.Join(p.root, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// process adds pid with its command line and fds linked to targets.
func (p fakeProc) process(pid string, cmdline string, targets ...string) {
	p.t.Helper()
	p.write(pid+"/cmdline", cmdline)
	p.write(pid+"/comm", "comm-"+pid+"\n")
	if err := os.MkdirAll(filepath.Join(p.root, pid, "fd"), 0o755); err != nil {
		p.t.Fatal(err)
	}
	for i, target := range targets {
		if err := os.Symlink(target, filepath.Join(p.root, pid, "fd", string(rune('0'+i)))); err != nil {
			p.t.Fatal(err)
		}
	}
}

func TestProcAddrMatchesKernel(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the sample line is from a little-endian machine")
	}
	if got := tcpLine("127.0.0.1", 26725, "0A", "123456"); !strings.HasPrefix(got, "   0: 0100007F:6865 00000000:0000 0A ") {
		t.Errorf("tcpLine = %q", got)
	}
	if got := procAddr(t4or6("::1")); got != "00000000000000000000000001000000" {
		t.Errorf("procAddr(::1) = %q", got)
	}
}

func TestFindHolder(t *testing.T) {
	const port = 26725 // 0x6865
	tests := []struct {
		name    string
		tcp     string
		tcp6    string
		procs   func(p fakeProc)
		want    *Holder
		wantErr string
	}{
		{
			name: "ipv4 loopback",
			tcp: tcpLine("0.0.0.0", 22, "0A", "111") +
				tcpLine("127.0.0.1", port, "0A", "123456") +
				tcpLine("127.0.0.1", 40000, "01", "222"),
			procs: func(p fakeProc) {
				p.process("1", "/sbin/init\x00", "socket:[111]", "/dev/null")
				p.process("1234", "python3\x00-m\x00http.server\x00", "/dev/null", "pipe:[9]", "socket:[123456]")
			},
			want: &Holder{PID: 1234, Command: "python3 -m http.server"},
		},
		{
			name: "ipv4 any",
			tcp:  tcpLine("0.0.0.0", port, "0A", "77"),
			procs: func(p fakeProc) {
				p.process("99", "nginx: master process\x00", "socket:[77]")
			},
			want: &Holder{PID: 99, Command: "nginx: master process"},
		},
		{
			name: "ipv6 any, lowest pid of those sharing the socket",
			tcp6: tcpLine("::", port, "0A", "88"),
			procs: func(p fakeProc) {
				p.process("300", "worker\x00", "socket:[88]")
				p.process("30", "parent\x00", "socket:[88]")
			},
			want: &Holder{PID: 30, Command: "parent"},
		},
		{
			name: "ipv6 loopback, command from comm when cmdline is empty",
			tcp6: tcpLine("::1", port, "0A", "89"),
			procs: func(p fakeProc) {
				p.process("5", "", "socket:[89]")
			},
			want: &Holder{PID: 5, Command: "[comm-5]"},
		},
		{
			name: "ipv4-mapped loopback",
			tcp6: tcpLine("::ffff:127.0.0.1", port, "0A", "90"),
			procs: func(p fakeProc) {
				p.process("6", "x\x00", "socket:[90]")
			},
			want: &Holder{PID: 6, Command: "x"},
		},
		{
			name: "other address, other state, other port",
			tcp: tcpLine("192.168.1.5", port, "0A", "1") +
				tcpLine("127.0.0.2", port, "0A", "2") +
				tcpLine("127.0.0.1", port, "01", "3") +
				tcpLine("127.0.0.1", port+1, "0A", "4"),
			procs: func(p fakeProc) {
				p.process("7", "x\x00", "socket:[1]", "socket:[2]", "socket:[3]", "socket:[4]")
			},
			wantErr: "find listener on port 26725: no listening socket in ",
		},
		{
			name: "socket in no process",
			tcp:  tcpLine("127.0.0.1", port, "0A", "555"),
			procs: func(p fakeProc) {
				p.process("7", "x\x00", "socket:[556]")
			},
			wantErr: "find process with socket inode 555 on port 26725: not in any process",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newFakeProc(t, tt.tcp, tt.tcp6)
			if tt.procs != nil {
				tt.procs(p)
			}
			got, err := findHolder(p.root, port)
			if !errContains(t, err, tt.wantErr) {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("findHolder (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFindHolderNoProc(t *testing.T) {
	_, err := findHolder(filepath.Join(t.TempDir(), "missing"), 80)
	errContains(t, err, "no listening socket")
}

func TestCommandTruncated(t *testing.T) {
	p := newFakeProc(t, "", "")
	p.process("8", strings.Repeat("a", 300))
	if got := command(p.root, 8); len(got) != maxCommand+3 || !strings.HasSuffix(got, "...") {
		t.Errorf("command = %q (%d bytes)", got, len(got))
	}
}

func TestFindHolderLiteralLine(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the line is from a little-endian machine")
	}
	p := newFakeProc(t, "   0: 0100007F:6685 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n",
		"   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 654321 1 0000000000000000 100 0 0 10 0\n")
	p.process("42", "python3\x00-m\x00http.server\x00", "socket:[123456]")
	p.process("43", "/usr/bin/caddy\x00run\x00", "socket:[654321]")
	for port, want := range map[int]*Holder{0x6685: {PID: 42, Command: "python3 -m http.server"}, 8080: {PID: 43, Command: "/usr/bin/caddy run"}} {
		got, err := findHolder(p.root, port)
		if err != nil {
			t.Fatalf("findHolder(%d): %v", port, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("findHolder(%d) (-want +got):\n%s", port, diff)
		}
	}
}
