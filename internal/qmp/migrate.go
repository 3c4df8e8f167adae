package qmp

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// GetFD hands f to QEMU under name (getfd): the descriptor travels with
// the command over the socket, so the connection must be a unix socket.
// QEMU keeps its own copy; the caller may close f afterwards.
func (c *Client) GetFD(ctx context.Context, name string, f *os.File) error {
	args := map[string]string{"fdname": name}
	if _, err := c.execute(ctx, "getfd", args, unix.UnixRights(int(f.Fd()))); err != nil {
		var qe *Error
		if errors.As(err, &qe) {
			return err
		}
		return fmt.Errorf("qmp getfd %s: %w", name, err)
	}
	return nil
}

// Stop pauses the guest's CPUs (stop).
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// Cont runs a paused guest (cont). After a completed outgoing migration it
// also takes the disks back, which the migration had let go of.
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// SetMigrationCapabilities sets migration capabilities by name.
func (c *Client) SetMigrationCapabilities(ctx context.Context, caps map[string]bool) error {
	type capability struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	var list []capability
	for k, v := range caps {
		list = append(list, capability{k, v})
	}
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// SetMigrationParameters sets migration parameters (migrate-set-parameters).
func (c *Client) SetMigrationParameters(ctx context.Context, params map[string]any) error {
	return c.Execute(ctx, "migrate-set-parameters", params, nil)
}

// Migrate starts an outgoing migration to uri; it returns at once (see
// WaitMigration).
func (c *Client) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]string{"uri": uri}, nil)
}

// MigrateIncoming starts loading a migration stream from uri into a QEMU
// started with -incoming defer.
func (c *Client) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", map[string]string{"uri": uri}, nil)
}

// MigrationInfo is the part of query-migrate's reply emu reads.
type MigrationInfo struct {
	// Status: none, setup, active, completed, failed, cancelled, ...
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc,omitempty"`
	// TotalTime is the migration's time in milliseconds, once completed.
	TotalTime int64 `json:"total-time,omitempty"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Total       int64 `json:"total"`
	} `json:"ram,omitempty"`
}

// Done reports whether the migration has ended, one way or the other.
func (m MigrationInfo) Done() bool {
	switch m.Status {
	case "completed", "failed", "cancelled":
		return true
	}
	return false
}

// QueryMigrate runs query-migrate: the outgoing migration's state, or on a
// QEMU started with -incoming, the incoming one's.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var m MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &m)
	return m, err
}

// WaitMigration waits until the migration has ended and returns its final
// state; a failed or cancelled one is an error that carries QEMU's reason.
// It asks again at each QMP event, so the "events" migration capability
// must be on (each state change is then a MIGRATION event); QEMU exiting
// or ctx ending ends the wait.
func (c *Client) WaitMigration(ctx context.Context) (MigrationInfo, error) {
	for {
		c.mu.Lock()
		wake := c.newEvent
		c.mu.Unlock()
		m, err := c.QueryMigrate(ctx)
		if err != nil {
			return m, err
		}
		switch m.Status {
		case "completed":
			return m, nil
		case "failed", "cancelled":
			why := m.ErrorDesc
			if why == "" {
				why = "no reason given"
			}
			return m, fmt.Errorf("migration %s: %s", m.Status, why)
		}
		select {
		case <-wake:
		case <-c.done:
			return m, fmt.Errorf("wait for migration: connection closed: %w", c.readErr)
		case <-ctx.Done():
			return m, fmt.Errorf("wait for migration (status %s): %w", m.Status, context.Cause(ctx))
		}
	}
}
