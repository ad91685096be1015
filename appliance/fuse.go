package appliance

import (
	"context"
	"fmt"
	"os"

	"github.com/tandem-dr/tandem/attach"
	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/fusefs"
)

// fuseSource presents the daemon's disks to the FUSE mount: each disk this
// site may write as disks/NAME, through the same journaling tap as NBD.
type fuseSource struct{ d *Daemon }

var _ fusefs.Source = fuseSource{}

func (s fuseSource) Entries(ctx context.Context) ([]fusefs.Entry, error) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	out := make([]fusefs.Entry, 0, len(s.d.disks))
	for name, od := range s.d.disks {
		if od.replica != nil {
			out = append(out, fusefs.Entry{
				Dir:      fusefs.DirViews,
				Name:     name + "@latest",
				File:     disk.ReadOnly(od.replica),
				ReadOnly: true,
			})
			continue
		}
		b := metered{tap: od.tap, m: od.meter}
		out = append(out, fusefs.Entry{
			Dir:     fusefs.DirDisks,
			Name:    name,
			File:    b,
			Extents: fuseExtents(b),
		})
	}
	return out, nil
}

// fuseExtents converts a backend's block status to fusefs extents (fusefs
// knows nothing of nbd).
func fuseExtents(b metered) func(off, length int64) ([]fusefs.Extent, error) {
	return func(off, length int64) ([]fusefs.Extent, error) {
		ext, err := b.Extents(off, length)
		if err != nil {
			return nil, err
		}
		out := make([]fusefs.Extent, len(ext))
		for i, e := range ext {
			out[i] = fusefs.Extent{Length: e.Length, Hole: e.Hole, Zero: e.Zero}
		}
		return out, nil
	}
}

// startFUSE mounts the disks under opts.FUSE (clearing a stale mount left
// by a killed daemon first) and returns the function that unmounts it.
func (d *Daemon) startFUSE(ctx context.Context) (func(context.Context) error, error) {
	if d.opts.FUSE == "" {
		return nil, nil
	}
	dir := d.opts.FUSE
	// Loop devices left on a killed daemon's files point at a dead
	// connection: detach them before the lazy unmount hides their path.
	if devs, err := attach.DetachUnder(ctx, dir); err != nil {
		d.log.Warn("detach stale loop devices", "dir", dir, "err", err)
	} else if len(devs) > 0 {
		d.log.Info("detached stale loop devices", "devices", devs)
	}
	if err := fusefs.ClearStale(dir); err != nil {
		return nil, fmt.Errorf("clear stale mount %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create mount point: %w", err)
	}
	fs, err := fusefs.Mount(ctx, dir, fuseSource{d}, fusefs.Options{}, d.log.With("component", "fuse"))
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	d.chMu.Lock()
	d.changed = func(name string) {
		fs.Invalidate(fusefs.DirDisks, name)
		fs.Invalidate(fusefs.DirViews, name+"@latest")
	}
	d.chMu.Unlock()
	d.log.Info("fuse mounted", "dir", dir)
	return fs.Unmount, nil
}
