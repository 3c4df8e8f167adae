package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/emu-dev/emu/internal/command"
)

// Account is who runs emu.
type Account struct {
	UID  int
	Name string // "" when the uid has no passwd entry
	// Groups are the process's group ids: membership of group kvm counts
	// only once a new login has it.
	Groups []int
}

// CurrentAccount is this process's account. The uid is the real one,
// which mmdebstrap looks up too.
func CurrentAccount() Account {
	a := Account{UID: os.Getuid()}
	if u, err := user.LookupId(strconv.Itoa(a.UID)); err == nil {
		a.Name = u.Username
	}
	gs, _ := os.Getgroups()
	a.Groups = append(gs, os.Getgid())
	return a
}

// rootlessChecks are what a build by a user other than root needs to make
// its tree with mmdebstrap --mode=unshare: unprivileged user namespaces,
// newuidmap and newgidmap able to map ids, and the user's subordinate id
// ranges. Root (and anything off Linux) needs none of them.
func rootlessChecks(opts Options) []Check {
	if opts.GOOS != "linux" || opts.Account.UID == 0 {
		return nil
	}
	return []Check{
		usernsCheck(opts),
		idmapCheck(opts, "newuidmap"),
		idmapCheck(opts, "newgidmap"),
		subidCheck(opts),
	}
}

// The sysctls that decide whether a user may make a user namespace.
const (
	// Debian's kernels before 6.1 defaulted it to 0; later ones to 1.
	sysctlUsernsClone = "kernel.unprivileged_userns_clone"
	sysctlMaxUserns   = "user.max_user_namespaces"
	// Ubuntu 23.10 and later: 1 means a user namespace made by a program
	// that no AppArmor profile allows it to has no capabilities inside.
	sysctlAppArmorUserns = "kernel.apparmor_restrict_unprivileged_userns"
	// usernsConf is where the fix persists the settings.
	usernsConf = "/etc/sysctl.d/90-emu-userns.conf"
)

func sysctlPath(name string) string {
	return "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
}

func usernsCheck(opts Options) Check {
	c := Check{Name: "user namespaces"}
	read := func(name string) (string, bool, error) {
		b, err := opts.ReadFile(sysctlPath(name))
		if errors.Is(err, fs.ErrNotExist) {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
		return strings.TrimSpace(string(b)), true, nil
	}
	var problems, set []string
	if v, ok, err := read(sysctlUsernsClone); err != nil {
		problems = append(problems, err.Error())
	} else if ok && v != "1" {
		problems = append(problems, sysctlUsernsClone+" is "+v+": users may not make user namespaces")
		set = append(set, sysctlUsernsClone+"=1")
	}
	max, ok, err := read(sysctlMaxUserns)
	switch {
	case err != nil:
		problems = append(problems, err.Error())
	case !ok:
		c.Detail = "the kernel has no user namespaces (no " + sysctlPath(sysctlMaxUserns) + ")"
		c.Fix = "boot a kernel built with CONFIG_USER_NS=y (Debian's and Ubuntu's are)"
		return c
	case max == "0":
		problems = append(problems, sysctlMaxUserns+" is 0: no user namespaces at all")
		set = append(set, sysctlMaxUserns+"=15000")
	}
	if v, ok, err := read(sysctlAppArmorUserns); err != nil {
		problems = append(problems, err.Error())
	} else if ok && v == "1" {
		problems = append(problems, sysctlAppArmorUserns+" is 1: AppArmor strips the capabilities from a user namespace "+
			"whose program no profile allows one, so mmdebstrap cannot set up its tree")
		set = append(set, sysctlAppArmorUserns+"=0")
	}
	if len(problems) == 0 {
		c.OK = true
		c.Detail = "unprivileged user namespaces allowed (" + sysctlMaxUserns + "=" + max + ")"
		return c
	}
	c.Detail = strings.Join(problems, "; ") + " (builds by a user other than root make their tree in one)"
	if len(set) > 0 {
		c.Fix = sysctlFix(set)
		if strings.Contains(c.Fix, sysctlAppArmorUserns) {
			c.Fix += " (or, instead of " + sysctlAppArmorUserns + "=0, an AppArmor profile for mmdebstrap with the userns rule)"
		}
	}
	return c
}

// sysctlFix sets the settings now and in usernsConf for the next boot.
func sysctlFix(set []string) string {
	persist := "echo " + set[0]
	if len(set) > 1 {
		persist = "printf '%s\\n' " + strings.Join(set, " ")
	}
	return "sudo sysctl -w " + strings.Join(set, " ") + "; to keep it after a reboot: " +
		persist + " | sudo tee " + usernsConf
}

// idmapCheck: newuidmap and newgidmap write the namespace's id maps, for
// which they must be setuid root or have file capabilities.
func idmapCheck(opts Options, name string) Check {
	c := Check{Name: name}
	p, err := command.LookSbin(opts.LookPath, name)
	if err != nil {
		c.Detail = "not found in PATH (maps the ids of a build's user namespace)"
		c.pkg, c.Fix = "uidmap", opts.sudo()+aptInstall("uidmap")
		return c
	}
	how, err := opts.Privilege(p)
	switch {
	case err != nil:
		c.Detail = err.Error()
	case how == "":
		c.Detail = p + " is neither setuid root nor has file capabilities: it cannot map ids"
		c.Fix = "sudo apt-get install --reinstall uidmap, or: sudo chmod u+s " + p
	default:
		c.OK, c.Detail = true, p+" ("+how+")"
	}
	return c
}

// Subordinate ids: mmdebstrap maps the tree's ids 0-65535 (nobody is
// 65534) onto the first range in /etc/subuid and /etc/subgid that names
// the user. It finds the range by user name only (1.3.5, bookworm's).
const (
	subidFiles = "/etc/subuid /etc/subgid"
	// SubidCount is the ids a build's user namespace needs.
	SubidCount = 65536
	// subidMin is where useradd starts handing out ranges (SUB_UID_MIN).
	subidMin = 100000
)

// subRange is one line of /etc/subuid or /etc/subgid.
type subRange struct {
	owner        string // a user name or a uid
	start, count uint64
}

func (r subRange) String() string {
	return fmt.Sprintf("%d-%d", r.start, r.start+r.count-1)
}

// parseSubids reads name:start:count lines, skipping what is not one.
func parseSubids(text string) []subRange {
	var rs []subRange
	for _, l := range strings.Split(text, "\n") {
		f := strings.Split(strings.TrimSpace(l), ":")
		if len(f) != 3 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		start, err1 := strconv.ParseUint(f[1], 10, 64)
		count, err2 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		rs = append(rs, subRange{owner: f[0], start: start, count: count})
	}
	return rs
}

// subidStart is where a new range of SubidCount ids goes: the first of
// useradd's starts (100000, 165536, ...) at or past the end of every
// range already in the files, so it overlaps none.
func subidStart(files ...[]subRange) uint64 {
	start := uint64(subidMin)
	for _, rs := range files {
		for _, r := range rs {
			if end := r.start + r.count; end > start {
				start = subidMin + (end-subidMin+SubidCount-1)/SubidCount*SubidCount
			}
		}
	}
	return start
}

// subidRange finds name's first range in one file (mmdebstrap's choice)
// and says what is wrong with it: problem is "" when it is large enough.
func subidRange(file string, rs []subRange, name string, uid int) (r *subRange, problem string) {
	byUID := false
	for i := range rs {
		if rs[i].owner == name {
			if rs[i].count < SubidCount {
				return &rs[i], fmt.Sprintf("%s: %s's first range %s has %d ids, under %d", file, name, rs[i], rs[i].count, SubidCount)
			}
			return &rs[i], ""
		}
		byUID = byUID || rs[i].owner == strconv.Itoa(uid)
	}
	if byUID {
		return nil, fmt.Sprintf("%s has a range for uid %d but none for %s (mmdebstrap looks ranges up by name)", file, uid, name)
	}
	return nil, fmt.Sprintf("%s has no range for %s", file, name)
}

func subidCheck(opts Options) Check {
	c := Check{Name: "subordinate ids"}
	a := opts.Account
	if a.Name == "" {
		c.Detail = fmt.Sprintf("uid %d has no user name, and mmdebstrap looks %s up by name", a.UID, subidFiles)
		c.Fix = "run emu as a user with an entry in /etc/passwd"
		return c
	}
	files := map[string][]subRange{}
	var problems []string
	for _, f := range strings.Fields(subidFiles) {
		b, err := opts.ReadFile(f)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.Detail = err.Error()
			return c
		}
		files[f] = parseSubids(string(b))
	}
	start := subidStart(files["/etc/subuid"], files["/etc/subgid"])
	add := subRange{start: start, count: SubidCount}
	fix := "sudo usermod"
	var have []string
	for _, f := range strings.Fields(subidFiles) {
		flag := strings.TrimPrefix(f, "/etc/sub") + "s" // uids, gids
		r, problem := subidRange(f, files[f], a.Name, a.UID)
		if problem == "" {
			have = append(have, flag+" "+r.String())
			continue
		}
		problems = append(problems, problem)
		if r != nil {
			fix += " --del-sub" + flag + " " + r.String()
		}
		fix += " --add-sub" + flag + " " + add.String()
	}
	if len(problems) == 0 {
		c.OK = true
		c.Detail = a.Name + ": " + strings.Join(have, ", ")
		return c
	}
	c.Detail = strings.Join(problems, "; ") + fmt.Sprintf(" (a build's user namespace maps %d ids onto them)", SubidCount)
	c.Fix = fix + " " + a.Name
	return c
}
