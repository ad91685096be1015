package disk

import (
	"fmt"

	"github.com/tandem-dr/tandem/nbd"
)

// ReadOnly wraps b so that every write fails with ErrReadOnly; reads,
// Size and Extents pass through. The wrapper has no Trimmer, Zeroer or
// Flusher, so an NBD server offers none of them for it.
func ReadOnly(b nbd.Backend) nbd.Backend { return readOnly{b} }

type readOnly struct{ b nbd.Backend }

var (
	_ nbd.Backend  = readOnly{}
	_ nbd.Extenter = readOnly{}
)

func (r readOnly) ReadAt(p []byte, off int64) (int, error) { return r.b.ReadAt(p, off) }

// WriteAt fails with ErrReadOnly and writes nothing.
func (r readOnly) WriteAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("write off=%d len=%d: %w", off, len(p), ErrReadOnly)
}

func (r readOnly) Size() int64 { return r.b.Size() }

// Extents passes through to b, or reports all data when b has none.
func (r readOnly) Extents(off, length int64) ([]nbd.Extent, error) {
	if e, ok := r.b.(nbd.Extenter); ok {
		return e.Extents(off, length)
	}
	return []nbd.Extent{{Length: length}}, nil
}
