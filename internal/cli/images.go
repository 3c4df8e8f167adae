package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/oci"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/store"
)

// imageRow is one image in the store, as emu images shows it.
type imageRow struct {
	Name    string    `json:"name"`
	Arch    string    `json:"arch"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	// From is the reference it was pulled from, "" for one built here.
	From string `json:"from,omitempty"`
	// Digest is the artifact's manifest digest: the one it was pulled
	// by, or the one a push of it makes.
	Digest string `json:"digest"`
	Dir    string `json:"dir"`
}

func runImages(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "images", "[--json]")
	jsonOut := fs.Bool("json", false, "print the images as a JSON array on stdout")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Errorf("images takes no arguments (got %q)", pos[0])}
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	rows, err := listImages(home)
	if err != nil {
		return err
	}
	if *jsonOut {
		if rows == nil {
			rows = []imageRow{}
		}
		b, err := json.MarshalIndent(rows, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(e.stdout, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tARCH\tSIZE\tCREATED\tFROM\tDIGEST")
	for _, r := range rows {
		from := r.From
		if from == "" {
			from = "built here"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Arch, progress.Humanize(r.Size),
			r.Created.Local().Format("2006-01-02 15:04"), from, shortDigest(r.Digest))
	}
	return tw.Flush()
}

// listImages reads every bundle in the store, by name.
func listImages(home store.Home) ([]imageRow, error) {
	entries, err := os.ReadDir(home.Images())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images in %s: %w", home.Images(), err)
	}
	var rows []imageRow
	for _, en := range entries {
		if !en.IsDir() || strings.HasPrefix(en.Name(), ".") {
			continue // a staged bundle, or one being removed
		}
		dir := filepath.Join(home.Images(), en.Name())
		cfg, err := os.ReadFile(filepath.Join(dir, store.BundleManifest))
		if err != nil {
			continue // not a bundle
		}
		var m bundle.Manifest
		if err := json.Unmarshal(cfg, &m); err != nil {
			return nil, fmt.Errorf("image %s: parse %s: %w", en.Name(), store.BundleManifest, err)
		}
		r := imageRow{Name: en.Name(), Arch: m.Arch, Created: m.Created, Dir: dir}
		for _, f := range m.Files {
			r.Size += f.Size
		}
		if o, err := oci.ReadOrigin(dir); err == nil {
			r.From, r.Digest = o.Ref, o.Digest
		} else if a, err := oci.NewArtifact(cfg, Version); err == nil {
			r.Digest = a.Digest.String()
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	return rows, nil
}

// shortDigest is sha256:0123456789ab, as a table shows it.
func shortDigest(d string) string {
	if d == "" {
		return "-"
	}
	if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return d[:len(d)-len(hex)] + hex[:12]
	}
	return d
}

func runRmi(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "rmi", "NAME...")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usageError{errors.New("rmi needs the name of an image (see emu images)")}
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	for _, name := range pos {
		if err := validImageName(name); err != nil {
			return usageError{err}
		}
		size, err := removeImage(home, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "removed image %s (%s)\n", name, progress.Humanize(size))
	}
	e.pruneDisks(home, false)
	return nil
}

// removeImage removes the image name from the store unless an instance
// uses it. The directory is first renamed out of sight, so the image is
// either there, whole, or gone.
func removeImage(home store.Home, name string) (int64, error) {
	dir := filepath.Join(home.Images(), name)
	m, err := bundle.Read(dir)
	if err != nil {
		if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
			return 0, withHint{err: fmt.Errorf("no image %s in the store", name), hint: "emu images lists them"}
		}
		return 0, err
	}
	// A build or pull writing this image would swap it back in.
	release, err := build.LockOutput(home.Locks(), dir)
	if err != nil {
		return 0, err
	}
	defer release()
	users, err := imageUsers(home, dir)
	if err != nil {
		return 0, err
	}
	if len(users) > 0 {
		return 0, withHint{
			err:  fmt.Errorf("image %s is in use by instance %s", name, strings.Join(users, ", ")),
			hint: fmt.Sprintf("emu down %[1]s stops it; emu reset %[1]s also deletes its data, after which the image can go", users[0]),
		}
	}
	gone := filepath.Join(home.Images(), "."+name+".rm-"+strconv.Itoa(os.Getpid()))
	if err := os.Rename(dir, gone); err != nil {
		return 0, fmt.Errorf("remove image %s: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return 0, fmt.Errorf("remove image %s (moved to %s): %w", name, gone, err)
	}
	var size int64
	for _, f := range m.Files {
		size += f.Size
	}
	return size, nil
}
