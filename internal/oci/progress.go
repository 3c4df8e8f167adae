package oci

import (
	"strconv"
	"sync"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// progressEvery bounds how often a transfer reports its bytes: often
// enough for a live rate, rarely enough for a --json log.
const progressEvery = 250 * time.Millisecond

// Fields of a blob's stage events, beside event.FieldDone and FieldTotal.
const (
	FieldDigest = "digest"
	// FieldReused says why a blob moved no bytes: "local" (on disk here
	// already) or "registry" (the registry had it).
	FieldReused = "reused"
)

// transfer reports a push or a pull as stages: one for the whole (total)
// and one per blob, named by its file. Its byte counts are safe for the
// concurrent use of several blobs.
type transfer struct {
	o     Options
	total string // the whole's stage name: "pull", "push"

	mu       sync.Mutex
	size     int64 // bytes to move in all
	done     int64
	lastEmit time.Time
}

func newTransfer(o Options, total string) *transfer {
	t := &transfer{o: o, total: total}
	o.emit(event.New(event.StageStart, total, ""))
	return t
}

// plan adds n bytes to move.
func (t *transfer) plan(n int64) {
	t.mu.Lock()
	t.size += n
	t.mu.Unlock()
}

// blob starts a blob's stage; its writer counts the bytes it moves.
func (t *transfer) blob(name string, size int64) *blobProgress {
	t.o.emit(event.New(event.StageStart, name, "").With(event.FieldTotal, strconv.FormatInt(size, 10)))
	return &blobProgress{t: t, name: name, size: size}
}

// finish ends the whole's stage.
func (t *transfer) finish(err error) {
	t.mu.Lock()
	done, size := t.done, t.size
	t.mu.Unlock()
	if err != nil {
		// The error itself ends the stream (the caller's failed event).
		t.o.emit(event.New(event.StageFailed, t.total, ""))
		return
	}
	t.o.emit(event.New(event.StageDone, t.total, "").
		With(proto.FieldSize, strconv.FormatInt(size, 10)).
		With(event.FieldDone, strconv.FormatInt(done, 10)))
}

// blobProgress is an io.Writer that counts one blob's bytes.
type blobProgress struct {
	t        *transfer
	name     string
	size     int64
	n        int64 // bytes moved this run
	resumed  int64 // bytes already there when the transfer started
	lastEmit time.Time
}

// Write counts p and reports now and then.
func (b *blobProgress) Write(p []byte) (int, error) {
	b.n += int64(len(p))
	now := time.Now()
	t := b.t
	t.mu.Lock()
	t.done += int64(len(p))
	emitTotal := now.Sub(t.lastEmit) >= progressEvery
	if emitTotal {
		t.lastEmit = now
	}
	done, size := t.done, t.size
	t.mu.Unlock()
	if now.Sub(b.lastEmit) >= progressEvery {
		b.lastEmit = now
		b.t.o.emit(progressEvent(b.name, b.resumed+b.n, b.size))
	}
	if emitTotal {
		t.o.emit(progressEvent(t.total, done, size))
	}
	return len(p), nil
}

// resume records n bytes a partial download already holds.
func (b *blobProgress) resume(n int64) {
	b.resumed = n
	b.t.mu.Lock()
	b.t.size -= n
	b.t.mu.Unlock()
}

// reused ends the blob's stage without moving it; the whole's size drops.
func (b *blobProgress) reused(digest, why string) {
	b.t.mu.Lock()
	b.t.size -= b.size
	b.t.mu.Unlock()
	msg := "on disk already"
	if why == "registry" {
		msg = "in the registry already"
	}
	b.t.o.emit(event.New(event.StageDone, b.name, msg).
		With(proto.FieldSize, strconv.FormatInt(b.size, 10)).
		With(FieldDigest, digest).
		With(FieldReused, why).
		With(proto.FieldCached, "true"))
}

// finish ends the blob's stage.
func (b *blobProgress) finish(digest string, err error) {
	if err != nil {
		b.t.o.emit(event.New(event.StageFailed, b.name, err.Error()).With(FieldDigest, digest))
		return
	}
	b.t.o.emit(event.New(event.StageDone, b.name, "").
		With(proto.FieldSize, strconv.FormatInt(b.size, 10)).
		With(FieldDigest, digest).
		With(event.FieldDone, strconv.FormatInt(b.n, 10)))
}

func progressEvent(name string, done, total int64) event.Event {
	return event.New(event.StageProgress, name, "").
		With(event.FieldDone, strconv.FormatInt(done, 10)).
		With(event.FieldTotal, strconv.FormatInt(total, 10))
}
