package fusefs

import (
	"context"
	"errors"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fileNode is DIR/dir/name. It holds no File of its own: every open asks
// the source, so a name the source replaced serves the new File.
type fileNode struct {
	fs.Inode
	fs        *FS
	dir, name string
}

var (
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
	_ = (fs.NodeSetattrer)((*fileNode)(nil))
)

// entry is the node's current entry, from the open handle when there is
// one, else from the source.
func (n *fileNode) entry(ctx context.Context, f fs.FileHandle) (Entry, syscall.Errno) {
	if h, ok := f.(*handle); ok {
		return h.e, 0
	}
	e, ok, err := n.fs.lookup(ctx, n.dir, n.name)
	if err != nil {
		return Entry{}, syscall.EIO
	}
	if !ok {
		return Entry{}, syscall.ENOENT
	}
	return e, 0
}

// Open resolves the entry and opens it; a read-only entry refuses write
// access with EROFS. Files are direct I/O unless Options.Cached.
func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	e, errno := n.entry(ctx, nil)
	if errno != 0 {
		return nil, 0, errno
	}
	acc := flags & syscall.O_ACCMODE
	writable := acc == syscall.O_WRONLY || acc == syscall.O_RDWR
	if writable && e.ReadOnly {
		return nil, 0, syscall.EROFS
	}
	var fuseFlags uint32
	if !n.fs.opts.Cached {
		fuseFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	}
	return &handle{e: e, writable: writable}, fuseFlags, 0
}

// Getattr reports the entry's size and mode.
func (n *fileNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	e, errno := n.entry(ctx, f)
	if errno != 0 {
		return errno
	}
	n.fs.fileAttr(&out.Attr, e)
	out.SetTimeout(n.fs.opts.AttrTimeout)
	return 0
}

// Setattr accepts a truncate only to the current size (EINVAL otherwise,
// EROFS on a read-only entry) and ignores mode, owner and time changes.
func (n *fileNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	e, errno := n.entry(ctx, f)
	if errno != 0 {
		return errno
	}
	if size, ok := in.GetSize(); ok && int64(size) != e.File.Size() {
		if e.ReadOnly {
			return syscall.EROFS
		}
		return syscall.EINVAL
	}
	n.fs.fileAttr(&out.Attr, e)
	out.SetTimeout(n.fs.opts.AttrTimeout)
	return 0
}

// handle is one open file.
type handle struct {
	e        Entry
	writable bool
}

var (
	_ = (fs.FileReader)((*handle)(nil))
	_ = (fs.FileWriter)((*handle)(nil))
	_ = (fs.FileFsyncer)((*handle)(nil))
	_ = (fs.FileFlusher)((*handle)(nil))
	_ = (fs.FileAllocater)((*handle)(nil))
	_ = (fs.FileLseeker)((*handle)(nil))
)

// Read reads up to the end of the file; a read at or past the end
// returns nothing.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := h.e.File.Size()
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	n, err := h.e.File.ReadAt(dest, off)
	if n < len(dest) {
		if err == nil {
			err = syscall.EIO
		}
		return nil, toErrno(err)
	}
	return fuse.ReadResultVector([][]byte{dest}), 0
}

// Write writes up to the end of the file: a write that starts at or
// past the end fails with ENOSPC, one that crosses it is short.
//
// The data reaches the File's WriteAt before Write returns, and is as
// durable as WriteAt makes it; fsync makes it durable through Flush.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.e.ReadOnly {
		return 0, syscall.EROFS
	}
	if len(data) == 0 {
		return 0, 0
	}
	size := h.e.File.Size()
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= size {
		return 0, syscall.ENOSPC
	}
	data = data[:min(int64(len(data)), size-off)]
	n, err := h.e.File.WriteAt(data, off)
	if err != nil && n == 0 {
		return 0, toErrno(err)
	}
	return uint32(n), 0
}

// Fsync makes every completed write durable through the File's Flush.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return h.flush(ctx)
}

// Flush is called at every close(2) of a descriptor; for one open for
// writing it flushes the File, so data written through a closed
// descriptor is durable.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	if !h.writable {
		return 0
	}
	return h.flush(ctx)
}

func (h *handle) flush(ctx context.Context) syscall.Errno {
	fl, ok := h.e.File.(Flusher)
	if !ok {
		return 0
	}
	if err := fl.Flush(ctx); err != nil {
		return toErrno(err)
	}
	return 0
}

// Allocate serves fallocate: PUNCH_HOLE|KEEP_SIZE trims, ZERO_RANGE
// zeroes, plain allocation inside the file succeeds (the volume is fully
// provisioned); growing the file fails with EFBIG, other modes with
// EOPNOTSUPP.
func (h *handle) Allocate(ctx context.Context, off, length uint64, mode uint32) syscall.Errno {
	if h.e.ReadOnly {
		return syscall.EROFS
	}
	const (
		keepSize  = unix.FALLOC_FL_KEEP_SIZE
		punchHole = unix.FALLOC_FL_PUNCH_HOLE
		zeroRange = unix.FALLOC_FL_ZERO_RANGE
	)
	if mode&^(keepSize|punchHole|zeroRange) != 0 || mode&(punchHole|zeroRange) == punchHole|zeroRange {
		return syscall.EOPNOTSUPP
	}
	if mode&punchHole != 0 && mode&keepSize == 0 {
		return syscall.EOPNOTSUPP // as the kernel requires
	}
	size := uint64(h.e.File.Size())
	end := off + length
	if end < off {
		return syscall.EFBIG
	}
	if end > size {
		if mode&keepSize == 0 {
			return syscall.EFBIG
		}
		end = size
	}
	if off >= end {
		return 0
	}
	o, l := int64(off), int64(end-off)
	var err error
	switch {
	case mode&punchHole != 0:
		if t, ok := h.e.File.(Trimmer); ok {
			err = t.Trim(o, l)
		} else if z, ok := h.e.File.(Zeroer); ok {
			err = z.Zero(o, l, true)
		} else {
			return syscall.EOPNOTSUPP
		}
	case mode&zeroRange != 0:
		if z, ok := h.e.File.(Zeroer); ok {
			err = z.Zero(o, l, false)
		} else {
			err = writeZeroes(h.e.File, o, l)
		}
	default:
		return 0
	}
	if err != nil {
		return toErrno(err)
	}
	return 0
}

// writeZeroes writes zeroes over [off, off+length) in chunks.
func writeZeroes(f File, off, length int64) error {
	buf := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(buf)))
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the entry's extents; without
// them the whole file is data with the implicit hole at its end.
func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	size := h.e.File.Size()
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, syscall.EINVAL
	}
	if off >= uint64(size) {
		return 0, syscall.ENXIO
	}
	res, err := seekExtents(h.extents(), size, int64(off), whence == unix.SEEK_DATA)
	if err != nil {
		return 0, toErrno(err)
	}
	return uint64(res), 0
}

func (h *handle) extents() func(off, length int64) ([]Extent, error) {
	if h.e.Extents != nil {
		return h.e.Extents
	}
	if x, ok := h.e.File.(Extenter); ok {
		return x.Extents
	}
	return nil
}

// errBadExtents reports an extent map that makes no progress.
var errBadExtents = errors.New("fusefs: extents make no progress")

// seekExtents returns the first offset at or after off that starts data
// (wantData) or a hole, walking the extents of [off, size). Past the last
// data, SEEK_DATA is ENXIO; SEEK_HOLE finds the implicit hole at size.
func seekExtents(ext func(off, length int64) ([]Extent, error), size, off int64, wantData bool) (int64, error) {
	if ext == nil {
		if wantData {
			return off, nil
		}
		return size, nil
	}
	pos := off
	for pos < size {
		es, err := ext(pos, size-pos)
		if err != nil {
			return 0, err
		}
		if len(es) == 0 {
			return 0, errBadExtents
		}
		for _, e := range es {
			if e.Length <= 0 {
				return 0, errBadExtents
			}
			if e.Hole != wantData {
				return pos, nil
			}
			pos += e.Length
			if pos >= size {
				break
			}
		}
	}
	if wantData {
		return 0, syscall.ENXIO
	}
	return size, nil
}

// toErrno passes an errno the File returned through to the kernel and
// reports every other failure as EIO.
func toErrno(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) && errno != 0 {
		return errno
	}
	return syscall.EIO
}
