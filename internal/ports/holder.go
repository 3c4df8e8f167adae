package ports

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// tcpListen is the state of a listening socket in /proc/net/tcp.
const tcpListen = "0A"

// maxCommand bounds Holder.Command; some command lines are very long.
const maxCommand = 200

// findHolder finds the process listening on port under the proc root: the
// LISTEN socket's inode from net/tcp and net/tcp6, then the process with an
// fd linked to socket:[inode].
func findHolder(root string, port int) (*Holder, error) {
	var inodes []string
	var errs []error
	for _, name := range []string{"net/tcp", "net/tcp6"} {
		found, err := listenInodes(filepath.Join(root, name), port)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		inodes = append(inodes, found...)
	}
	if len(inodes) == 0 {
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("find listener on port %d: no listening socket in %s", port, filepath.Join(root, "net/tcp{,6}"))
	}
	pid, err := socketOwner(root, inodes)
	if err != nil {
		return nil, fmt.Errorf("find process with socket inode %s on port %d: %w", strings.Join(inodes, ", "), port, err)
	}
	return &Holder{PID: pid, Command: command(root, pid)}, nil
}

// listenInodes returns the inodes of the LISTEN sockets on port in a
// /proc/net/tcp-format file, on an address that conflicts with 127.0.0.1.
func listenInodes(path string, port int) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode ...
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] != tcpListen || f[9] == "0" {
			continue
		}
		addr, lport, ok := parseLocal(f[1])
		if !ok || lport != port || !conflicts(addr) {
			continue
		}
		out = append(out, f[9])
	}
	return out, nil
}

// parseLocal parses "0100007F:1F90": the address as the kernel prints it,
// 32-bit words in host byte order, and the port.
func parseLocal(s string) (netip.Addr, int, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, false
	}
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return addr, int(port), true
}

// conflicts reports whether a listener on addr keeps 127.0.0.1 from the port.
func conflicts(addr netip.Addr) bool {
	addr = addr.Unmap()
	return addr.IsUnspecified() || addr == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || addr == netip.IPv6Loopback()
}

// socketOwner returns the lowest pid with an fd linked to one of inodes.
func socketOwner(root string, inodes []string) (int, error) {
	want := map[string]bool{}
	for _, ino := range inodes {
		want["socket:["+ino+"]"] = true
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return 0, fmt.Errorf("list processes in %s: %w", root, err)
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	denied := 0
	for _, pid := range pids {
		dir := filepath.Join(root, strconv.Itoa(pid), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			// Another user's process, or one that just exited.
			if errors.Is(err, os.ErrPermission) {
				denied++
			}
			continue
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && want[link] {
				return pid, nil
			}
		}
	}
	if denied > 0 {
		return 0, fmt.Errorf("not in any process we may inspect (%d are another user's; try as root)", denied)
	}
	return 0, errors.New("not in any process")
}

// command returns pid's command line, or its name when that is empty or
// unreadable.
func command(root string, pid int) string {
	dir := filepath.Join(root, strconv.Itoa(pid))
	b, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
	cmd := strings.Join(strings.FieldsFunc(string(b), func(r rune) bool { return r == 0 }), " ")
	if cmd == "" {
		b, _ = os.ReadFile(filepath.Join(dir, "comm"))
		cmd = "[" + strings.TrimSpace(string(b)) + "]"
	}
	if len(cmd) > maxCommand {
		cmd = cmd[:maxCommand] + "..."
	}
	return cmd
}
