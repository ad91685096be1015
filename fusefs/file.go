package fusefs

import (
	"context"
	"io"
)

// File is the volume behind one file of the mount. It is all an entry
// must implement; the optional interfaces below are found by type
// assertion and have the same method names and signatures as nbd's
// optional backend interfaces, so a value that serves an NBD export serves
// a FUSE file unchanged (Extents differs only in its element type; see
// [ExtentsFunc]).
//
// fusefs checks every request against Size before calling the File, so
// ReadAt and WriteAt are only called with ranges inside [0, Size). Methods
// are called concurrently. WriteAt must not retain p after it returns.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Size is the volume's size in bytes. The file's size is fixed: a
	// truncate to any other size fails with EINVAL.
	Size() int64
}

// Flusher is implemented by Files that can make completed writes durable.
// fsync, fdatasync and the FUSE flush sent on every close map to Flush.
// When absent, fsync succeeds without doing anything: the File's writes
// are as durable as the File makes them.
type Flusher interface {
	// Flush returns once every write that completed before it was called
	// is durable.
	Flush(ctx context.Context) error
}

// Trimmer is implemented by Files that can discard a range. fallocate
// with FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE (what a loop device sends
// for a discard) maps to Trim. fallocate promises that a punched range
// reads as zeroes afterwards, so a File whose Trim may leave old data
// readable should not implement Trimmer; when Trimmer is absent, punching
// a hole calls Zero with mayTrim set.
type Trimmer interface {
	Trim(off, length int64) error
}

// Zeroer is implemented by Files that can write zeroes without a data
// transfer. fallocate with FALLOC_FL_ZERO_RANGE maps to Zero with mayTrim
// false. When absent, ZERO_RANGE writes a zero buffer.
type Zeroer interface {
	// Zero makes the range read as zeroes. With mayTrim the File may
	// deallocate the range instead of writing zeroes.
	Zero(off, length int64, mayTrim bool) error
}

// Extent is one run of a File's allocation map. Its fields are those of
// nbd.Extent, so a slice of either converts element by element:
// fusefs.Extent(e).
type Extent struct {
	Length int64
	// Hole is an unallocated run: SEEK_HOLE stops at it and SEEK_DATA
	// skips it. Zero says the run reads as zeroes (allocated or not);
	// an allocated run of zeroes is data for lseek.
	Hole bool
	Zero bool
}

// Extenter is implemented by Files that know which ranges hold data;
// lseek's SEEK_DATA and SEEK_HOLE are answered from it. When absent (and
// the Entry has no Extents function), the whole file is data.
type Extenter interface {
	// Extents describes [off, off+length). It returns at least one extent
	// and may describe less than length (the caller asks again), never
	// more.
	Extents(off, length int64) ([]Extent, error)
}

// ExtentsFunc adapts an extents method whose element type has the fields
// of [Extent] (nbd.Extent) into the function [Entry.Extents] takes:
//
//	fusefs.Entry{..., Extents: fusefs.ExtentsFunc(tap.Extents, func(e nbd.Extent) fusefs.Extent { return fusefs.Extent(e) })}
func ExtentsFunc[E any](f func(off, length int64) ([]E, error), conv func(E) Extent) func(off, length int64) ([]Extent, error) {
	return func(off, length int64) ([]Extent, error) {
		es, err := f(off, length)
		if err != nil {
			return nil, err
		}
		out := make([]Extent, len(es))
		for i, e := range es {
			out[i] = conv(e)
		}
		return out, nil
	}
}
