package fusefs

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
)

// The directories a tandem mount shows at its root.
const (
	DirDisks = "disks" // writable disks of this site
	DirViews = "views" // read-only point-in-time views, NAME@ID
	DirTest  = "test"  // test-failover overlays
)

// DefaultDirs are the root directories shown when Options.Dirs is empty.
var DefaultDirs = []string{DirDisks, DirViews, DirTest}

// Entry is one file of the mount: DIR/Dir/Name.
type Entry struct {
	// Dir is the root directory the file appears in (DirDisks, DirViews,
	// DirTest or any other name of Options.Dirs).
	Dir string
	// Name is the file's name; it must be a valid single path element.
	Name string
	// File serves the file's data.
	File File
	// ReadOnly refuses opens for writing, writes, fallocate and truncate
	// with EROFS.
	ReadOnly bool
	// Extents, when set, answers SEEK_DATA and SEEK_HOLE instead of the
	// File's own Extenter (see ExtentsFunc).
	Extents func(off, length int64) ([]Extent, error)
}

// Source says which files the mount holds. It is asked at every lookup,
// directory listing and open, so entries created and removed at run time
// appear and disappear without telling the FS (the kernel may keep a name
// it looked up for Options.EntryTimeout; an open after the source dropped
// it fails with ENOENT).
type Source interface {
	// Entries returns every file of the mount. It is called concurrently.
	Entries(ctx context.Context) ([]Entry, error)
}

// SourceFunc adapts a function to a Source.
type SourceFunc func(ctx context.Context) ([]Entry, error)

// Entries calls f.
func (f SourceFunc) Entries(ctx context.Context) ([]Entry, error) { return f(ctx) }

// ErrBadName is returned by Set.Put for a name that is not a single path
// element.
var ErrBadName = errors.New("fusefs: bad entry name")

// Set is a Source that holds its entries in memory; the daemon (or a
// test) puts and deletes them. The zero Set is empty and ready to use.
type Set struct {
	mu      sync.Mutex
	entries map[[2]string]Entry
}

var _ Source = (*Set)(nil)

// Put adds e, replacing an entry with the same Dir and Name.
func (s *Set) Put(e Entry) error {
	if !validName(e.Dir) || !validName(e.Name) {
		return ErrBadName
	}
	if e.File == nil {
		return errors.New("fusefs: entry without a file")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.entries == nil {
		s.entries = make(map[[2]string]Entry)
	}
	s.entries[[2]string{e.Dir, e.Name}] = e
	return nil
}

// Delete removes DIR/name and reports whether it was there.
func (s *Set) Delete(dir, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{dir, name}
	_, ok := s.entries[k]
	delete(s.entries, k)
	return ok
}

// Entries returns the entries sorted by Dir and Name.
func (s *Set) Entries(ctx context.Context) ([]Entry, error) {
	s.mu.Lock()
	out := make([]Entry, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Dir != out[j].Dir {
			return out[i].Dir < out[j].Dir
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// validName reports whether name can be one element of a path.
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= 255 &&
		!strings.ContainsAny(name, "/\x00")
}
