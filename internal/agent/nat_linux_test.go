package agent

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The hand-written messages are google/nftables' for the same table,
// chain and rule, attribute for attribute (google/nftables is only this
// test's: the agent itself uses x/sys/unix alone).
func TestNATMessagesMatchNftables(t *testing.T) {
	var sent []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		sent = append(sent, req...)
		return nil, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: natTable})
	chain := c.AddChain(&nftables.Chain{Name: natChain, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	local := c.AddChain(&nftables.Chain{Name: natLocal, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityNATSource})
	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, "eth0")
	c.AddRule(&nftables.Rule{Table: table, Chain: local, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{127, 0, 0, 1}},
		&expr.Immediate{Register: 1, Data: []byte{127, 0, 0, 1}},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}})
	port := []byte{0x1f, 0x40} // 8000
	c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{10, 0, 2, 15}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
		&expr.Immediate{Register: 1, Data: []byte{127, 0, 0, 1}},
		&expr.Immediate{Register: 2, Data: port},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	rule, err := nftRedirect("eth0", "10.0.2.15", 8000)
	if err != nil {
		t.Fatal(err)
	}
	setup, err := nftSetup("eth0")
	if err != nil {
		t.Fatal(err)
	}
	ours := append(setup, rule)
	// google/nftables' batch: begin, table, 2 chains, 2 rules, end.
	if len(sent) != len(ours)+2 {
		t.Fatalf("google/nftables sent %d messages, want %d", len(sent), len(ours)+2)
	}
	for i, m := range ours {
		theirs := sent[i+1]
		if typ := uint16(theirs.Header.Type); typ != nativeU16(m[4:]) {
			t.Errorf("message %d: type %#x, google/nftables %#x", i, nativeU16(m[4:]), typ)
		}
		if got, want := m[unix.NLMSG_HDRLEN:], theirs.Data; string(got) != string(want) {
			t.Errorf("message %d differs from google/nftables':\n ours   %x\n theirs %x", i, got, want)
		}
	}
	if _, err := nftRedirect("eth0", "::1", 80); err == nil {
		t.Error("an IPv6 address made a rule")
	}
	if _, err := nftSetup("an-interface-name-too-long"); err == nil {
		t.Error("a 26-byte interface name made a rule")
	}
}

func nativeU16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }

// The kernel takes the batch: in a network namespace of its own, the
// table, chain and a rule are created; a rule for a chain that does not
// exist is refused with the kernel's error.
func TestNATKernelAccepts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	inNetns := func(f func() error) error {
		errc := make(chan error, 1)
		go func() {
			// The thread stays in the namespace and ends with the
			// goroutine: it is never unlocked.
			runtime.LockOSThread()
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				errc <- err
				return
			}
			errc <- f()
		}()
		return <-errc
	}
	rule, err := nftRedirect("eth0", "10.0.2.15", 5432)
	if err != nil {
		t.Fatal(err)
	}
	setup, err := nftSetup("eth0")
	if err != nil {
		t.Fatal(err)
	}
	err = inNetns(func() error {
		if err := nftSend(setup); err != nil {
			return err
		}
		return nftSend([][]byte{rule})
	})
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) {
		t.Skipf("no nftables in this kernel: %v", err)
	}
	if err != nil {
		t.Fatalf("table, chain and rule: %v", err)
	}
	if err := inNetns(func() error { return nftSend([][]byte{rule}) }); !errors.Is(err, unix.ENOENT) {
		t.Errorf("a rule without its chain: %v, want ENOENT", err)
	}
}
