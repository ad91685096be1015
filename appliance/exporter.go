package appliance

import (
	"context"
	"fmt"
	"strings"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/nbd"
)

// exporter resolves NBD export names to the daemon's disks and views:
// NAME is a primary disk (writable), NAME@ID a view of a point in time.
type exporter struct{ d *Daemon }

var _ nbd.Exporter = exporter{}

func (e exporter) resolve(name string) (*openDisk, string, error) {
	base, point, _ := strings.Cut(name, "@")
	od, ok := e.d.lookup(base)
	if !ok {
		return nil, "", fmt.Errorf("%w: %q", nbd.ErrUnknownExport, name)
	}
	return od, point, nil
}

func (e exporter) Info(ctx context.Context, name string) (nbd.ExportInfo, error) {
	od, point, err := e.resolve(name)
	if err != nil {
		return nbd.ExportInfo{}, err
	}
	if point != "" {
		return nbd.ExportInfo{}, fmt.Errorf("%w: %q: no such view", nbd.ErrUnknownExport, name)
	}
	return nbd.ExportInfo{
		Name:        name,
		Description: fmt.Sprintf("tandem disk %s (%s)", od.meta.Name, od.meta.Role),
		Size:        od.meta.Size,
		ReadOnly:    od.meta.Role != RolePrimary,
	}, nil
}

func (e exporter) Open(ctx context.Context, name string) (*nbd.Export, error) {
	info, err := e.Info(ctx, name)
	if err != nil {
		return nil, err
	}
	od, _, err := e.resolve(name)
	if err != nil {
		return nil, err
	}
	var b nbd.Backend = metered{tap: od.tap, m: od.meter}
	if info.ReadOnly {
		b = disk.ReadOnly(b)
	}
	return &nbd.Export{ExportInfo: info, Backend: b}, nil
}

func (e exporter) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	var out []nbd.ExportInfo
	for _, di := range e.d.Disks(ctx) {
		info, err := e.Info(ctx, di.Name)
		if err != nil {
			continue
		}
		out = append(out, info)
	}
	return out, nil
}
