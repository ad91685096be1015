package nbd

import (
	"context"
	"fmt"
)

// SingleExport is an Exporter of one backend under one name. The default
// export (the empty name) is the same backend. Every connection shares the
// backend; it is not closed when connections end.
type SingleExport struct {
	Name        string
	Description string
	Backend     Backend
	ReadOnly    bool
}

var _ Exporter = (*SingleExport)(nil)

func (e *SingleExport) info() ExportInfo {
	return ExportInfo{Name: e.Name, Description: e.Description, Size: e.Backend.Size(), ReadOnly: e.ReadOnly,
		Flags: FlagsFor(e.Backend, e.ReadOnly)}
}

func (e *SingleExport) match(name string) error {
	if name != "" && name != e.Name {
		return fmt.Errorf("export %q: %w", name, ErrUnknownExport)
	}
	return nil
}

// Open returns the backend when name is the export's name or empty.
func (e *SingleExport) Open(ctx context.Context, name string) (*Export, error) {
	if err := e.match(name); err != nil {
		return nil, err
	}
	return &Export{ExportInfo: e.info(), Backend: e.Backend}, nil
}

// Info describes the export when name is its name or empty.
func (e *SingleExport) Info(ctx context.Context, name string) (ExportInfo, error) {
	if err := e.match(name); err != nil {
		return ExportInfo{}, err
	}
	return e.info(), nil
}

// List returns the one export.
func (e *SingleExport) List(ctx context.Context) ([]ExportInfo, error) {
	return []ExportInfo{e.info()}, nil
}
