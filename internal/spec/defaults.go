package spec

import "time"

// Defaults for fields left out of the stack file.
const (
	DefaultSuite         = "trixie"
	DefaultKernel        = "linux-image-cloud-amd64" // for DefaultArch: see DefaultKernelFor
	DefaultArch          = "amd64"
	DefaultCPUs          = 2
	DefaultMemory        = 2 * GiB
	DefaultDisk          = 4 * GiB
	DefaultHealthTimeout = Duration(2 * time.Minute)
	DefaultHTTPStatus    = 200
	DefaultHTTPPath      = "/"
	DefaultStepTimeout   = Duration(10 * time.Minute)
	// DefaultCompress is none: measured on the demo, a UPX-packed API made
	// the bundle 1 MB bigger (the disk is one zstd stream, which already
	// compresses the binary, and better), and cost 43 ms of start and twice
	// the memory. Ask for upx where a file ships outside an image.
	DefaultCompress      = "none"
	DefaultUPXLevel      = 9
	DefaultVerifyTimeout = Duration(30 * time.Second)
)

// DefaultKernelFor is the kernel package for a guest of arch: Debian's
// cloud kernel, small and made for virtual machines (virtio, no firmware).
func DefaultKernelFor(arch string) string { return "linux-image-cloud-" + arch }

// setDefaults fills in every field left empty that has a default. Parse
// applies it before validation.
func (s *Stack) setDefaults() {
	if s.Base.Suite == "" {
		s.Base.Suite = DefaultSuite
	}
	if s.Base.Arch == "" {
		s.Base.Arch = DefaultArch
	}
	if s.Base.Kernel == "" {
		s.Base.Kernel = DefaultKernelFor(s.Base.Arch)
	}
	if s.VM.CPUs == 0 {
		s.VM.CPUs = DefaultCPUs
	}
	if s.VM.Memory == 0 {
		s.VM.Memory = DefaultMemory
	}
	if s.VM.Disk == 0 {
		s.VM.Disk = DefaultDisk
	}
	for i := range s.Files {
		s.Files[i].Optimize.setDefaults()
	}
	for name, svc := range s.Services {
		if svc.Health.Timeout == 0 {
			svc.Health.Timeout = DefaultHealthTimeout
		}
		if h := svc.Health.HTTP; h != nil {
			if h.Status == 0 {
				h.Status = DefaultHTTPStatus
			}
			if h.Path == "" {
				h.Path = DefaultHTTPPath
			}
		}
		for i := range svc.Ports {
			if svc.Ports[i].Host == 0 {
				svc.Ports[i].Host = svc.Ports[i].Guest
			}
		}
		s.Services[name] = svc
	}
	for i := range s.Bake {
		if s.Bake[i].Timeout == 0 {
			s.Bake[i].Timeout = DefaultStepTimeout
		}
	}
}

// DefaultOptimize is what `optimize: true` means.
func DefaultOptimize() Optimize {
	return Optimize{Enabled: true, Strip: true, Compress: DefaultCompress, Level: DefaultUPXLevel}
}

func (o *Optimize) setDefaults() {
	if !o.Enabled {
		return
	}
	if o.Compress == "" {
		o.Compress = DefaultCompress
	}
	if o.Level == 0 {
		o.Level = DefaultUPXLevel
	}
	if o.Verify != nil && o.Verify.Timeout == 0 {
		o.Verify.Timeout = DefaultVerifyTimeout
	}
}
