package appliance

import (
	"context"
	"fmt"
	"strings"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/nbd"
)

// exporter resolves NBD export names to the daemon's disks and views:
// NAME is a primary disk (writable) or a replica (read-only, at its
// consistent point); NAME@latest is the newest consistent point of a
// replica.
type exporter struct{ d *Daemon }

var _ nbd.Exporter = exporter{}

// resolve finds the backend of an export name.
func (e exporter) resolve(name string) (nbd.ExportInfo, nbd.Backend, error) {
	base, point, _ := strings.Cut(name, "@")
	od, ok := e.d.lookup(base)
	if !ok {
		return nbd.ExportInfo{}, nil, fmt.Errorf("%w: %q", nbd.ErrUnknownExport, name)
	}
	info := nbd.ExportInfo{Name: name, Size: od.meta.Size}
	switch {
	case od.tap != nil && point == "":
		info.Description = fmt.Sprintf("tandem disk %s (primary)", base)
		b := metered{tap: od.tap, m: od.meter}
		info.Flags = nbd.FlagsFor(b, false)
		return info, b, nil
	case od.replica != nil && (point == "" || point == "latest"):
		info.Description = fmt.Sprintf("tandem replica %s of site %s, newest consistent point", base, od.meta.Peer)
		info.ReadOnly = true
		b := disk.ReadOnly(od.replica)
		info.Flags = nbd.FlagsFor(b, true)
		return info, b, nil
	}
	return nbd.ExportInfo{}, nil, fmt.Errorf("%w: %q: no such view", nbd.ErrUnknownExport, name)
}

func (e exporter) Info(ctx context.Context, name string) (nbd.ExportInfo, error) {
	info, _, err := e.resolve(name)
	return info, err
}

func (e exporter) Open(ctx context.Context, name string) (*nbd.Export, error) {
	info, b, err := e.resolve(name)
	if err != nil {
		return nil, err
	}
	return &nbd.Export{ExportInfo: info, Backend: b}, nil
}

func (e exporter) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	var out []nbd.ExportInfo
	for _, di := range e.d.Disks(ctx) {
		names := []string{di.Name}
		if di.Role == RoleReplica {
			names = append(names, di.Name+"@latest")
		}
		for _, n := range names {
			if info, _, err := e.resolve(n); err == nil {
				out = append(out, info)
			}
		}
	}
	return out, nil
}
