package vmtest

import (
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// EchoResult is what MeasureEcho saw through one address.
type EchoResult struct {
	P50, P99 time.Duration
	// MBps is the bulk transfer's rate, one way, in MB (10^6 bytes) a
	// second.
	MBps float64
}

// MeasureEcho measures an echo service at addr (echoserver, or anything
// that sends back what it gets) on one connection: trips round trips of 64
// bytes each (median and 99th percentile), then total bytes sent while
// they are read back, counted one way.
func MeasureEcho(addr string, trips int, total int64) (EchoResult, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return EchoResult{}, err
	}
	defer c.Close()
	// Generous: a bulk transfer through an emulated guest may be slow,
	// but a stalled one must end.
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	buf := make([]byte, 64)
	lat := make([]time.Duration, trips)
	for i := range lat {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return EchoResult{}, fmt.Errorf("round trip %d to %s: %w", i, addr, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return EchoResult{}, fmt.Errorf("round trip %d to %s: %w", i, addr, err)
		}
		lat[i] = time.Since(start)
	}
	slices.Sort(lat)
	chunk := make([]byte, 1<<20)
	start := time.Now()
	werr := make(chan error, 1)
	go func() {
		var err error
		for left := total; left > 0 && err == nil; left -= int64(len(chunk)) {
			_, err = c.Write(chunk[:min(left, int64(len(chunk)))])
		}
		werr <- err
	}()
	if _, err := io.CopyN(io.Discard, c, total); err != nil {
		return EchoResult{}, fmt.Errorf("%d bytes through %s: %w", total, addr, err)
	}
	if err := <-werr; err != nil {
		return EchoResult{}, fmt.Errorf("%d bytes through %s: %w", total, addr, err)
	}
	secs := time.Since(start).Seconds()
	return EchoResult{P50: lat[len(lat)/2], P99: lat[len(lat)*99/100], MBps: float64(total) / secs / 1e6}, nil
}
