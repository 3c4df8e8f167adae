package progress

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// pullEvents is a pull as internal/oci reports it: the whole, then one
// stage per blob; the kernel was on disk already.
func pullEvents() []event.Event {
	prog := func(d int, name, done, total string) event.Event {
		return at(ms(d), event.StageProgress, name, "").With(event.FieldDone, done).With(event.FieldTotal, total)
	}
	return []event.Event{
		at(0, event.StageStart, "pull", ""),
		at(ms(100), event.StageStart, "disk.tar.zst", "").With(event.FieldTotal, "100000000"),
		prog(1100, "disk.tar.zst", "25000000", "100000000"),
		prog(1100, "pull", "25000000", "120000000"),
		at(ms(4100), event.StageDone, "disk.tar.zst", "").With(proto.FieldSize, "100000000").With(event.FieldDone, "100000000"),
		at(ms(4100), event.StageStart, "vmlinuz", "").With(event.FieldTotal, "8000000"),
		at(ms(4100), event.StageDone, "vmlinuz", "on disk already").With(proto.FieldSize, "8000000").With(proto.FieldCached, "true"),
		at(ms(4100), event.StageStart, "initrd.img", "").With(event.FieldTotal, "20000000"),
		at(ms(4900), event.StageDone, "initrd.img", "").With(proto.FieldSize, "20000000").With(event.FieldDone, "20000000"),
		at(ms(4900), event.StageDone, "pull", "").With(proto.FieldSize, "120000000").With(event.FieldDone, "120000000"),
	}
}

func TestTransferPlain(t *testing.T) {
	got := runAll(Plain, pullEvents())
	want := strings.Join([]string{
		"12:01:02 stage pull: started",
		"12:01:06 disk.tar.zst: 4.0s (100.0 MB, 25.0 MB/s)",
		"12:01:06 vmlinuz (cached, 8.0 MB): on disk already",
		"12:01:06 initrd.img: 0.8s (20.0 MB, 25.0 MB/s)",
		"12:01:06 pull: 4.9s (120.0 MB, 24.5 MB/s)",
	}, "\n") + "\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("plain (-want +got):\n%s", diff)
	}
}

func TestTransferLive(t *testing.T) {
	clock := &fakeClock{now: t0}
	var buf bytes.Buffer
	r := New(&buf, Live, WithClock(clock.Now), WithTick(0), WithWidth(func() int { return 0 }))
	for _, e := range pullEvents()[:4] {
		clock.Set(e.Time)
		r.Emit(e)
	}
	clock.Set(t0.Add(ms(1100)))
	r.render()
	want := strings.Join([]string{
		"  ⠙ pull            1.1s  (25.0 MB / 120.0 MB, 22.7 MB/s, 4.2s left)",
		"  ⠙ disk.tar.zst    1.0s  (25.0 MB / 100.0 MB, 25.0 MB/s, 3.0s left)",
	}, "\n") + "\n"
	if diff := cmp.Diff(want, screen(t, buf.String())); diff != "" {
		t.Errorf("running frame (-want +got):\n%s", diff)
	}
}
