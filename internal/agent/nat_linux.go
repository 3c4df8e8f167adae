package agent

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// NAT sends the host's forwards to a guest port whose service listens on
// 127.0.0.1 only straight to that listener, in the guest's kernel: a
// destination NAT rule (nftables: table ip emu, chain forwards) rewrites
// Addr:PORT arriving on Iface to 127.0.0.1:PORT, and Iface's
// route_localnet lets such packets in. A source NAT rule (chain loopback,
// on input) makes them come from 127.0.0.1 too, as through the relay: a
// stock config trusts local clients only (PostgreSQL's pg_hba.conf,
// Valkey's protected mode), and the forward's clients are the
// developer's own. No process copies the bytes, as the relay does; under
// TCG a round trip through the relay cost 3.2 times the direct path's
// (docs/benchmarks.md).
//
// The few nftables messages this takes are written here with x/sys/unix,
// which keeps the agent free of other modules (imports_test.go); a test
// checks them against google/nftables.
type NAT struct {
	// Iface is where the forwards arrive (eth0); Addr their destination
	// (GuestAddr).
	Iface, Addr string

	once sync.Once
	err  error
}

const (
	natTable = "emu"
	natChain = "forwards"
	// natLocal holds the one source NAT rule, for every redirected port.
	natLocal = "loopback"
)

// Redirect sends TCP to Addr:port arriving on Iface to 127.0.0.1:port.
// The first call also makes the table and chain and sets route_localnet.
func (n *NAT) Redirect(port int) error {
	n.once.Do(func() {
		sysctl := "/proc/sys/net/ipv4/conf/" + n.Iface + "/route_localnet"
		if err := os.WriteFile(sysctl, []byte("1"), 0o644); err != nil {
			n.err = fmt.Errorf("let %s route to the loopback: %w", n.Iface, err)
			return
		}
		msgs, err := nftSetup(n.Iface)
		if err == nil {
			err = nftSend(msgs)
		}
		if err != nil {
			n.err = fmt.Errorf("create nftables table ip %s: %w", natTable, err)
		}
	})
	if n.err != nil {
		return n.err
	}
	rule, err := nftRedirect(n.Iface, n.Addr, port)
	if err != nil {
		return err
	}
	if err := nftSend([][]byte{rule}); err != nil {
		return fmt.Errorf("redirect %s:%d to 127.0.0.1:%d: %w", n.Addr, port, port, err)
	}
	return nil
}

// nftSetup is the table, its destination NAT chain on prerouting and its
// source NAT chain on input, each at the priority of its kind of NAT, and
// the source NAT rule
//
//	iifname IFACE ip daddr 127.0.0.1 snat to 127.0.0.1
//
// which only the redirected packets match: nothing else arrives on IFACE
// for the loopback.
func nftSetup(iface string) ([][]byte, error) {
	table := nlattr(nil, unix.NFTA_TABLE_NAME, cstr(natTable))
	table = nlattr(table, unix.NFTA_TABLE_FLAGS, be32(0))
	ifname, err := ifnameData(iface)
	if err != nil {
		return nil, err
	}
	local := net.IPv4(127, 0, 0, 1).To4()
	snat := nftRule(natLocal,
		nftMeta(unix.NFT_META_IIFNAME, unix.NFT_REG_1), nftCmpEq(unix.NFT_REG_1, ifname),
		nftPayload(unix.NFT_PAYLOAD_NETWORK_HEADER, 16, 4, unix.NFT_REG_1), nftCmpEq(unix.NFT_REG_1, local),
		nftImmediate(unix.NFT_REG_1, local),
		nftNAT(unix.NFT_NAT_SNAT, unix.NFT_REG_1, 0),
	)
	create := uint16(unix.NLM_F_REQUEST | unix.NLM_F_ACK | unix.NLM_F_CREATE)
	return [][]byte{
		nftMsg(unix.NFT_MSG_NEWTABLE, create, table),
		nftMsg(unix.NFT_MSG_NEWCHAIN, create, nftChain(natChain, unix.NF_INET_PRE_ROUTING, -100)), // NF_IP_PRI_NAT_DST
		nftMsg(unix.NFT_MSG_NEWCHAIN, create, nftChain(natLocal, unix.NF_INET_LOCAL_IN, 100)),     // NF_IP_PRI_NAT_SRC
		snat,
	}, nil
}

// nftChain is a base chain of type nat in natTable.
func nftChain(name string, hooknum uint32, prio int32) []byte {
	hook := nlattr(nil, unix.NFTA_HOOK_HOOKNUM, be32(hooknum))
	hook = nlattr(hook, unix.NFTA_HOOK_PRIORITY, be32(uint32(prio)))
	chain := nlattr(nil, unix.NFTA_CHAIN_TABLE, cstr(natTable))
	chain = nlattr(chain, unix.NFTA_CHAIN_NAME, cstr(name))
	chain = nlattr(chain, unix.NLA_F_NESTED|unix.NFTA_CHAIN_HOOK, hook)
	return nlattr(chain, unix.NFTA_CHAIN_TYPE, cstr("nat"))
}

// nftRule appends a rule of exprs to chain.
func nftRule(chain string, exprs ...[]byte) []byte {
	var list []byte
	for _, e := range exprs {
		list = nlattr(list, unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, e)
	}
	rule := nlattr(nil, unix.NFTA_RULE_TABLE, cstr(natTable))
	rule = nlattr(rule, unix.NFTA_RULE_CHAIN, cstr(chain))
	rule = nlattr(rule, unix.NLA_F_NESTED|unix.NFTA_RULE_EXPRESSIONS, list)
	return nftMsg(unix.NFT_MSG_NEWRULE, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_APPEND, rule)
}

// ifnameData is an interface name as nftables compares it: IFNAMSIZ
// bytes, zero-padded.
func ifnameData(iface string) ([]byte, error) {
	if iface == "" || len(iface) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("interface name %q: want 1 to %d bytes", iface, unix.IFNAMSIZ-1)
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, iface)
	return b, nil
}

// nftRedirect is the rule
//
//	iifname IFACE ip daddr ADDR tcp dport PORT dnat to 127.0.0.1:PORT
func nftRedirect(iface, addr string, port int) ([]byte, error) {
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		return nil, fmt.Errorf("redirect port %d: %q is not an IPv4 address", port, addr)
	}
	ifname, err := ifnameData(iface)
	if err != nil {
		return nil, fmt.Errorf("redirect port %d: %w", port, err)
	}
	p := binary.BigEndian.AppendUint16(nil, uint16(port))
	const reg1, reg2 = unix.NFT_REG_1, unix.NFT_REG_2
	return nftRule(natChain,
		nftMeta(unix.NFT_META_IIFNAME, reg1), nftCmpEq(reg1, ifname),
		nftPayload(unix.NFT_PAYLOAD_NETWORK_HEADER, 16, 4, reg1), nftCmpEq(reg1, ip),
		nftMeta(unix.NFT_META_L4PROTO, reg1), nftCmpEq(reg1, []byte{unix.IPPROTO_TCP}),
		nftPayload(unix.NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg1), nftCmpEq(reg1, p),
		nftImmediate(reg1, net.IPv4(127, 0, 0, 1).To4()), nftImmediate(reg2, p),
		nftNAT(unix.NFT_NAT_DNAT, reg1, reg2),
	), nil
}

// nftExpr is one expression of a rule: its name and its attributes.
func nftExpr(name string, data []byte) []byte {
	b := nlattr(nil, unix.NFTA_EXPR_NAME, cstr(name))
	return nlattr(b, unix.NLA_F_NESTED|unix.NFTA_EXPR_DATA, data)
}

func nftMeta(key, dreg uint32) []byte {
	b := nlattr(nil, unix.NFTA_META_KEY, be32(key))
	return nftExpr("meta", nlattr(b, unix.NFTA_META_DREG, be32(dreg)))
}

func nftCmpEq(sreg uint32, value []byte) []byte {
	b := nlattr(nil, unix.NFTA_CMP_SREG, be32(sreg))
	b = nlattr(b, unix.NFTA_CMP_OP, be32(unix.NFT_CMP_EQ))
	return nftExpr("cmp", nlattr(b, unix.NLA_F_NESTED|unix.NFTA_CMP_DATA, nlattr(nil, unix.NFTA_DATA_VALUE, value)))
}

func nftPayload(base, offset, length, dreg uint32) []byte {
	b := nlattr(nil, unix.NFTA_PAYLOAD_DREG, be32(dreg))
	b = nlattr(b, unix.NFTA_PAYLOAD_BASE, be32(base))
	b = nlattr(b, unix.NFTA_PAYLOAD_OFFSET, be32(offset))
	return nftExpr("payload", nlattr(b, unix.NFTA_PAYLOAD_LEN, be32(length)))
}

func nftImmediate(dreg uint32, value []byte) []byte {
	b := nlattr(nil, unix.NFTA_IMMEDIATE_DREG, be32(dreg))
	return nftExpr("immediate", nlattr(b, unix.NLA_F_NESTED|unix.NFTA_IMMEDIATE_DATA, nlattr(nil, unix.NFTA_DATA_VALUE, value)))
}

// nftNAT: NAT of typ (NFT_NAT_DNAT, NFT_NAT_SNAT) to the address in
// addrReg and, unless portReg is 0, the port in portReg
// (NF_NAT_RANGE_PROTO_SPECIFIED: the port is given).
func nftNAT(typ, addrReg, portReg uint32) []byte {
	b := nlattr(nil, unix.NFTA_NAT_TYPE, be32(typ))
	b = nlattr(b, unix.NFTA_NAT_FAMILY, be32(unix.NFPROTO_IPV4))
	b = nlattr(b, unix.NFTA_NAT_REG_ADDR_MIN, be32(addrReg))
	if portReg != 0 {
		b = nlattr(b, unix.NFTA_NAT_REG_PROTO_MIN, be32(portReg))
		b = nlattr(b, unix.NFTA_NAT_FLAGS, be32(unix.NF_NAT_RANGE_PROTO_SPECIFIED))
	}
	return nftExpr("nat", b)
}

// nftMsg is an nftables message for the IPv4 family, its sequence number
// left for nftSend.
func nftMsg(typ, flags uint16, attrs []byte) []byte {
	return nlmsg(unix.NFNL_SUBSYS_NFTABLES<<8|typ, flags, unix.NFPROTO_IPV4, 0, attrs)
}

// nlmsg is a netfilter netlink message: the netlink header and struct
// nfgenmsg (family, version, resource id in network order), then attrs.
func nlmsg(typ, flags uint16, family uint8, resID uint16, attrs []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+4+len(attrs))
	binary.NativeEndian.PutUint32(b[0:], uint32(unix.NLMSG_HDRLEN+4+len(attrs)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	b = append(b, family, unix.NFNETLINK_V0)
	b = binary.BigEndian.AppendUint16(b, resID)
	return append(b, attrs...)
}

// nlattr appends the attribute typ with data, padded to 4 bytes, to b.
func nlattr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofNlAttr+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func cstr(s string) []byte { return append([]byte(s), 0) }

// nftBatch wraps msgs in a batch (the kernel applies nftables changes as
// one transaction) and numbers every message from 1.
func nftBatch(msgs [][]byte) []byte {
	var all [][]byte
	all = append(all, nlmsg(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil))
	all = append(all, msgs...)
	all = append(all, nlmsg(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil))
	var b []byte
	for i, m := range all {
		m = append([]byte(nil), m...)
		binary.NativeEndian.PutUint32(m[8:], uint32(i+1))
		b = append(b, m...)
	}
	return b
}

// nftSend sends msgs as one batch and waits for the kernel's answer to
// each: an acknowledgement, or the error that undid the batch.
func nftSend(msgs [][]byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	// Every wait has an end: the kernel answers at once or not at all.
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("netlink timeout: %w", err)
	}
	if err := unix.Sendto(fd, nftBatch(msgs), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	// The messages are numbered 2.. in the batch; each asked for an ack.
	want := map[uint32]bool{}
	for i := range msgs {
		want[uint32(i+2)] = true
	}
	buf := make([]byte, 1<<16)
	for len(want) > 0 {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		replies, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		for _, r := range replies {
			if r.Header.Type != unix.NLMSG_ERROR || len(r.Data) < 4 {
				continue
			}
			delete(want, r.Header.Seq)
			if errno := int32(binary.NativeEndian.Uint32(r.Data)); errno != 0 {
				return unix.Errno(-errno)
			}
		}
	}
	return nil
}
