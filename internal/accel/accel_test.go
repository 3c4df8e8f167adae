package accel

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/qemu"
)

// fakeHost builds a Chooser whose /dev/kvm, boot id, QEMU binary and probe
// are all fakes under a temp dir. probe counts its calls.
func fakeHost(t *testing.T, goos, goarch string, kvm bool, probe ProbeFunc) (*Chooser, *int) {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bin := write("qemu-system-x86_64", "")
	calls := 0
	c := &Chooser{
		GOOS: goos, GOARCH: goarch,
		CacheDir:   filepath.Join(dir, "cache"),
		KVMDevice:  filepath.Join(dir, "kvm"),
		BootIDFile: write("boot_id", "boot-1\n"),
		LookPath:   func(string) (string, error) { return bin, nil },
		Probe: func(ctx context.Context, arch, b string, a qemu.Accel) error {
			calls++
			if b != bin || a != qemu.KVM || arch != goarch {
				t.Errorf("probe(%q, %q, %q), want (%q, %q, kvm)", arch, b, a, goarch, bin)
			}
			return probe(ctx, arch, b, a)
		},
	}
	if kvm {
		write("kvm", "")
	}
	return c, &calls
}

func ok(context.Context, string, string, qemu.Accel) error { return nil }

func TestChoose(t *testing.T) {
	crash := func(context.Context, string, string, qemu.Accel) error {
		return errors.New("signal: aborted: error: failed to set MSR 0x10a to 0x69")
	}
	hang := func(ctx context.Context, _, _ string, _ qemu.Accel) error {
		<-ctx.Done()
		return ctx.Err()
	}
	for _, tc := range []struct {
		name          string
		goos, goarch  string
		kvm           bool
		probe         ProbeFunc
		guest, forced string
		want          qemu.Accel
		reason        string
		probes        int
	}{
		{"linux kvm works", "linux", "amd64", true, ok, "amd64", "", qemu.KVM, "kvm: ", 1},
		{"linux kvm crashes", "linux", "amd64", true, crash, "amd64", "", qemu.TCG, "probe guest (-cpu host) failed under it: signal: aborted", 1},
		{"linux kvm hangs", "linux", "amd64", true, hang, "amd64", "", qemu.TCG, "did not finish within 50ms", 1},
		{"linux no kvm", "linux", "amd64", false, ok, "amd64", "", qemu.TCG, "does not open read-write", 0},
		{"cross arch", "linux", "amd64", true, ok, "arm64", "", qemu.TCG, "guest arm64 differs from host amd64", 0},
		{"darwin arm64", "darwin", "arm64", false, ok, "arm64", "", qemu.HVF, "hvf: macOS", 0},
		{"darwin cross", "darwin", "arm64", false, ok, "amd64", "", qemu.TCG, "differs", 0},
		{"windows", "windows", "amd64", false, ok, "amd64", "", qemu.TCG, "no hardware accelerator", 0},
		{"linux arm64 kvm works", "linux", "arm64", true, ok, "arm64", "", qemu.KVM, "probe guest ran under it", 1},
		{"linux arm64 kvm crashes", "linux", "arm64", true, crash, "arm64", "", qemu.TCG, "probe guest (-cpu host) failed", 1},
		{"forced tcg", "linux", "amd64", true, crash, "amd64", "tcg", qemu.TCG, "chosen by --accel", 0},
		{"forced kvm over broken probe", "linux", "amd64", true, crash, "amd64", "kvm", qemu.KVM, "chosen by --accel", 0},
		{"forced hvf", "darwin", "arm64", false, ok, "arm64", "hvf", qemu.HVF, "chosen by --accel", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, calls := fakeHost(t, tc.goos, tc.goarch, tc.kvm, tc.probe)
			c.ProbeTimeout = 50 * time.Millisecond
			got, err := c.Choose(context.Background(), tc.guest, tc.forced)
			if err != nil {
				t.Fatalf("Choose: %v", err)
			}
			if got.Accel != tc.want || !strings.Contains(got.Reason, tc.reason) || strings.Contains(got.Reason, "\n") {
				t.Errorf("Choose = %+v, want %s with reason containing %q", got, tc.want, tc.reason)
			}
			if wantScale := map[bool]float64{true: TCGTimeoutScale, false: 1}[tc.want == qemu.TCG]; got.TimeoutScale != wantScale {
				t.Errorf("TimeoutScale = %v, want %v", got.TimeoutScale, wantScale)
			}
			if *calls != tc.probes {
				t.Errorf("probe ran %d times, want %d", *calls, tc.probes)
			}
		})
	}
}

func TestChooseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, goos, guest, forced, want string
	}{
		{"bad arch", "linux", "riscv64", "", `unsupported guest architecture "riscv64"`},
		{"bad override", "linux", "amd64", "xen", `accel "xen": unknown`},
		{"hvf on linux", "linux", "amd64", "hvf", "needs a macOS host"},
		{"kvm on darwin", "darwin", "amd64", "kvm", "needs a Linux host"},
		{"kvm cross arch", "linux", "arm64", "kvm", "not arm64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := fakeHost(t, tc.goos, "amd64", true, ok)
			_, err := c.Choose(context.Background(), tc.guest, tc.forced)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestChooseCache(t *testing.T) {
	c, calls := fakeHost(t, "linux", "amd64", true, ok)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		got, err := c.Choose(ctx, "amd64", "")
		if err != nil || got.Accel != qemu.KVM {
			t.Fatalf("Choose #%d = %+v, %v", i, got, err)
		}
		if i == 1 && !strings.Contains(got.Reason, "cached") {
			t.Errorf("second reason %q does not say cached", got.Reason)
		}
	}
	if *calls != 1 {
		t.Fatalf("probe ran %d times, want 1 (cached)", *calls)
	}

	// A reboot probes again.
	os.WriteFile(c.BootIDFile, []byte("boot-2\n"), 0o644)
	c.Choose(ctx, "amd64", "")
	if *calls != 2 {
		t.Fatalf("after reboot probe ran %d times, want 2", *calls)
	}

	// A new QEMU binary probes again.
	bin, _ := c.LookPath("")
	later := time.Now().Add(time.Hour)
	os.Chtimes(bin, later, later)
	c.Choose(ctx, "amd64", "")
	if *calls != 3 {
		t.Fatalf("after qemu upgrade probe ran %d times, want 3", *calls)
	}

	// An interrupted probe is not cached.
	os.WriteFile(c.BootIDFile, []byte("boot-3\n"), 0o644)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if got, _ := c.Choose(cctx, "amd64", ""); got.Accel != qemu.TCG || !strings.Contains(got.Reason, "interrupted") {
		t.Errorf("interrupted Choose = %+v", got)
	}
	c.Choose(ctx, "amd64", "")
	if *calls != 5 {
		t.Fatalf("probe ran %d times, want 5 (interrupted probe not cached)", *calls)
	}
}

func TestBootSector(t *testing.T) {
	if len(bootSector) != 512 || bootSector[510] != 0x55 || bootSector[511] != 0xAA || bootSector[0] != 0xB0 {
		t.Fatalf("boot sector malformed: % x", bootSector[:8])
	}
}

// TestProbeTCG proves the probe guest itself is right: under TCG it must
// reach isa-debug-exit and make QEMU exit 99.
func TestProbeTCG(t *testing.T) {
	bin := needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := Probe(ctx, "amd64", bin, qemu.TCG); err != nil {
		t.Fatalf("tcg probe: %v", err)
	}
	t.Logf("tcg probe exited %d in %s", probeExitCode, time.Since(start))
}

// TestProbeArm64TCG proves the arm64 probe guest: under TCG on the virt
// machine it writes OK to the UART and powers off through PSCI.
func TestProbeArm64TCG(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU")
	}
	bin, err := exec.LookPath("qemu-system-aarch64")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no qemu-system-aarch64")
		}
		t.Skip("no qemu-system-aarch64")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := Probe(ctx, "arm64", bin, qemu.TCG); err != nil {
		t.Fatalf("arm64 tcg probe: %v", err)
	}
	t.Logf("arm64 tcg probe ran in %s", time.Since(start))
}

// TestChooseOnBrokenKVM runs on machines like ours: /dev/kvm is there but the
// CPU has no vmx/svm, and guests under KVM do not run. Choose must say tcg
// and name the failed probe.
func TestChooseOnBrokenKVM(t *testing.T) {
	needQEMU(t)
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skip("/dev/kvm does not open")
	}
	f.Close()
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	if strings.Contains(string(cpuinfo), " vmx") || strings.Contains(string(cpuinfo), " svm") {
		t.Skip("CPU has vmx/svm: KVM may well work here")
	}
	c := Chooser{CacheDir: t.TempDir()}
	got, err := c.Choose(context.Background(), "amd64", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", got)
	if got.Accel != qemu.TCG || !strings.Contains(got.Reason, "probe guest") || got.TimeoutScale != TCGTimeoutScale {
		t.Errorf("Choose = %+v, want tcg with a reason naming the probe guest", got)
	}
}

func needQEMU(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs QEMU")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	return bin
}

// FallBack to TCG is remembered in the probe's cache for this boot.
func TestFallBackRemembered(t *testing.T) {
	dir := t.TempDir()
	c := Choice{Accel: qemu.KVM, TimeoutScale: 1, TBSize: 64,
		cache: cacheEntry{BootID: "b1", QEMU: "/usr/bin/qemu", KVMWorks: true}, cachePath: filepath.Join(dir, "accel.json")}
	tcg := c.FallBack("a guest hung under kvm")
	if tcg.Accel != qemu.TCG || tcg.TimeoutScale != TCGTimeoutScale || tcg.TBSize != 64 {
		t.Errorf("FallBack = %+v", tcg)
	}
	b, err := os.ReadFile(filepath.Join(dir, "accel.json"))
	if err != nil || !strings.Contains(string(b), `"kvm_works": false`) || !strings.Contains(string(b), "a guest hung under kvm") {
		t.Errorf("cache after FallBack: %s, %v", b, err)
	}
}
