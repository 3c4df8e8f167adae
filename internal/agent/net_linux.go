package agent

import (
	"context"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// QEMU's user-mode network: the guest's fixed address and the host side.
var (
	guestAddr = net.IPv4(10, 0, 2, 15)
	guestMask = net.IPv4(255, 255, 255, 0)
)

// ConfigureNetwork gives eth0 QEMU's user-mode guest address, so the port
// forwards reach the services. It needs no DHCP client or iproute2 in the
// image: a few ioctls do it.
func ConfigureNetwork(ctx context.Context, ifname string) error {
	if err := waitLink(ctx, ifname, 20*time.Second); err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("configure %s: %w", ifname, err)
	}
	defer unix.Close(fd)
	if err := setAddr(fd, ifname, unix.SIOCSIFADDR, guestAddr); err != nil {
		return fmt.Errorf("configure %s: set address: %w", ifname, err)
	}
	if err := setAddr(fd, ifname, unix.SIOCSIFNETMASK, guestMask); err != nil {
		return fmt.Errorf("configure %s: set netmask: %w", ifname, err)
	}
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("configure %s: get flags: %w", ifname, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("configure %s: bring up: %w", ifname, err)
	}
	return nil
}

// setAddr sets an IPv4 address-type field (address, netmask) of ifname.
func setAddr(fd int, ifname string, req uint, ip net.IP) error {
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return err
	}
	// The ifreq union holds a struct sockaddr_in here.
	if err := ifr.SetInet4Addr(ip.To4()); err != nil {
		return err
	}
	return unix.IoctlIfreq(fd, req, ifr)
}
