package fusefs_test

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/fusefs"
)

// memFile is an in-memory fusefs.File that records what reached it.
type memFile struct {
	mu      sync.Mutex
	data    []byte
	flushes int
	trims   [][2]int64
	zeroes  [][3]int64 // off, length, mayTrim
	extents []fusefs.Extent
}

func newMemFile(size int) *memFile { return &memFile{data: make([]byte, size)} }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memFile) Size() int64 { return int64(len(m.data)) }

func (m *memFile) Flush(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return nil
}

func (m *memFile) Trim(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.trims = append(m.trims, [2]int64{off, length})
	clear(m.data[off : off+length])
	return nil
}

func (m *memFile) Zero(off, length int64, mayTrim bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := int64(0)
	if mayTrim {
		t = 1
	}
	m.zeroes = append(m.zeroes, [3]int64{off, length, t})
	clear(m.data[off : off+length])
	return nil
}

// Extents serves the map in m.extents, cut to [off, off+length).
func (m *memFile) Extents(off, length int64) ([]fusefs.Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []fusefs.Extent
	pos := int64(0)
	for _, e := range m.extents {
		start, end := max(pos, off), min(pos+e.Length, off+length)
		pos += e.Length
		if start < end {
			e.Length = end - start
			out = append(out, e)
		}
	}
	return out, nil
}

func (m *memFile) setExtents(es []fusefs.Extent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.extents = es
}

func (m *memFile) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...)
}

func (m *memFile) counts() (flushes int, trims [][2]int64, zeroes [][3]int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.flushes, append([][2]int64(nil), m.trims...), append([][3]int64(nil), m.zeroes...)
}

// mount mounts src under a temporary directory and unmounts it at the end
// of the test.
func mount(t *testing.T, src fusefs.Source, opts fusefs.Options) (*fusefs.FS, string) {
	t.Helper()
	dir := t.TempDir()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fsys, err := fusefs.Mount(context.Background(), dir, src, opts, logger)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := fsys.Unmount(ctx); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	return fsys, dir
}
