package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tandem-dr/tandem/internal/aligned"
	"github.com/tandem-dr/tandem/nbd"
)

// Errors returned by File.
var (
	// ErrReadOnly is returned by writes to a File opened read-only.
	ErrReadOnly = errors.New("disk: read-only")
	// ErrOutOfRange is returned for a range outside [0, Size).
	ErrOutOfRange = errors.New("disk: range out of bounds")
)

// FileOptions configures OpenFile. The zero value opens an existing file or
// device read-write at its current size.
type FileOptions struct {
	// ReadOnly opens the store without write access; writes, trims and
	// zeroes fail with ErrReadOnly.
	ReadOnly bool
	// Size, when > 0, creates a regular file of this size if it does not
	// exist, or grows a smaller one to it (sparsely). A block device, or a
	// file already at least this large, is left as it is.
	Size int64
	// DirectWrites sends writes whose offset and length are multiples of
	// DirectAlign through a second descriptor opened with O_DIRECT, by
	// way of an aligned copy: for data that is written far more than it
	// is read (a replica's store and staging area), which then costs
	// neither the page cache's copy nor its writeback; writing a new file
	// through the page cache is several times slower on some virtual
	// disks. Other writes, and a file system without O_DIRECT (tmpfs
	// before Linux 6.6), go through the page cache. Reads stay buffered;
	// the kernel keeps the two coherent.
	DirectWrites bool
}

// DirectAlign is the alignment of offsets, lengths and buffers of
// FileOptions.DirectWrites.
const DirectAlign = aligned.Size

// File is a local block store: a raw regular file or a block device.
// It implements nbd.Backend, nbd.Flusher, nbd.Trimmer, nbd.Zeroer,
// nbd.Extenter and nbd.MultiConner.
//
// Acknowledgement contract: WriteAt returns once the data is in the kernel's
// page cache (or on the device for O_DIRECT devices); it is durable only after
// a later Flush returns nil. Flush is fdatasync, which covers writes made
// through every handle of the same file, so flushes are visible across
// connections (CanMultiConn).
type File struct {
	f        *os.File
	fd       int
	size     int64
	block    bool
	readOnly bool
	direct   *os.File  // O_DIRECT descriptor of DirectWrites, nil without
	aligned  sync.Pool // *[]byte aligned to DirectAlign, for direct writes
}

var (
	_ nbd.Backend     = (*File)(nil)
	_ nbd.Flusher     = (*File)(nil)
	_ nbd.Trimmer     = (*File)(nil)
	_ nbd.Zeroer      = (*File)(nil)
	_ nbd.Extenter    = (*File)(nil)
	_ nbd.MultiConner = (*File)(nil)
	_ nbd.FileRanger  = (*File)(nil)
)

// OpenFile opens the regular file or block device at path.
func OpenFile(path string, opts FileOptions) (*File, error) {
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	if opts.Size > 0 && !opts.ReadOnly {
		flag |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open disk %s: %w", path, err)
	}
	d := &File{f: f, fd: int(f.Fd()), readOnly: opts.ReadOnly}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat disk %s: %w", path, err)
	}
	switch {
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		d.block = true
		var sz uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&sz))); e != 0 {
			f.Close()
			return nil, fmt.Errorf("size of block device %s: %w", path, e)
		}
		d.size = int64(sz)
	case fi.Mode().IsRegular():
		d.size = fi.Size()
		if opts.Size > d.size {
			if opts.ReadOnly {
				f.Close()
				return nil, fmt.Errorf("grow disk %s to %d: %w", path, opts.Size, ErrReadOnly)
			}
			if err := f.Truncate(opts.Size); err != nil {
				f.Close()
				return nil, fmt.Errorf("grow disk %s to %d: %w", path, opts.Size, err)
			}
			d.size = opts.Size
		}
	default:
		f.Close()
		return nil, fmt.Errorf("open disk %s: not a regular file or block device", path)
	}
	if opts.DirectWrites && !opts.ReadOnly {
		df, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
		switch {
		case err == nil:
			d.direct = df
		case !errors.Is(err, unix.EINVAL):
			f.Close()
			return nil, fmt.Errorf("open disk %s for direct writes: %w", path, err)
		}
	}
	return d, nil
}

// Size is the store's size in bytes.
func (d *File) Size() int64 { return d.size }

// ReadOnly reports whether the store was opened read-only.
func (d *File) ReadOnly() bool { return d.readOnly }

// ReadAt reads len(p) bytes at off (pread). Reads past Size return io.EOF.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("read disk off=%d len=%d: %w", off, len(p), err)
	}
	return n, err
}

// WriteAt writes p at off (pwrite). It does not retain p. The data is
// durable only after a later Flush.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if d.readOnly {
		return 0, ErrReadOnly
	}
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("write disk off=%d len=%d: %w", off, len(p), ErrOutOfRange)
	}
	if d.direct != nil && off%DirectAlign == 0 && len(p)%DirectAlign == 0 && len(p) > 0 {
		return d.writeDirect(p, off)
	}
	n, err := d.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write disk off=%d len=%d: %w", off, len(p), err)
	}
	return n, nil
}

// writeDirect writes p at off through the O_DIRECT descriptor, from p
// itself when it is aligned, else from an aligned copy.
func (d *File) writeDirect(p []byte, off int64) (int, error) {
	b := p
	if !aligned.Starts(p) {
		scratch, _ := d.aligned.Get().(*[]byte)
		if scratch == nil {
			scratch = new([]byte)
		}
		defer d.aligned.Put(scratch)
		b = aligned.Buf(scratch, len(p))
		copy(b, p)
	}
	n, err := d.direct.WriteAt(b, off)
	if err != nil {
		return n, fmt.Errorf("write disk off=%d len=%d (direct): %w", off, len(p), err)
	}
	return n, nil
}

// Flush makes every write completed before it durable (fdatasync).
func (d *File) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.readOnly {
		return nil
	}
	for {
		err := unix.Fdatasync(d.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("flush disk: %w", err)
		}
		return nil
	}
}

// CanMultiConn reports true: a Flush covers writes made through any handle.
func (d *File) CanMultiConn() bool { return true }

func (d *File) checkRange(op string, off, length int64) error {
	if d.readOnly {
		return fmt.Errorf("%s disk off=%d len=%d: %w", op, off, length, ErrReadOnly)
	}
	if off < 0 || length < 0 || off+length > d.size || off+length < off {
		return fmt.Errorf("%s disk off=%d len=%d: %w", op, off, length, ErrOutOfRange)
	}
	return nil
}

// Trim deallocates the range and keeps the size: a punched hole in a regular
// file (the range then reads as zeroes), BLKDISCARD on a block device (the
// range may then read as anything).
func (d *File) Trim(off, length int64) error {
	if err := d.checkRange("trim", off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if d.block {
		r := [2]uint64{uint64(off), uint64(length)}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r))); e != 0 {
			return fmt.Errorf("trim disk off=%d len=%d: %w", off, length, e)
		}
		return nil
	}
	if err := fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length); err != nil {
		return fmt.Errorf("trim disk off=%d len=%d: %w", off, length, err)
	}
	return nil
}

// Zero makes the range read as zeroes. With mayTrim a regular file gets a
// punched hole; otherwise the blocks stay allocated (FALLOC_FL_ZERO_RANGE, or
// BLKZEROOUT on a device). When the file system cannot do either, zeroes are
// written.
func (d *File) Zero(off, length int64, mayTrim bool) error {
	if err := d.checkRange("zero", off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	var err error
	if d.block {
		r := [2]uint64{uint64(off), uint64(length)}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r))); e != 0 {
			err = e
		}
	} else if mayTrim {
		err = fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	} else {
		err = fallocate(d.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	}
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("zero disk off=%d len=%d: %w", off, length, err)
	}
	if err := d.writeZeroes(off, length); err != nil {
		return fmt.Errorf("zero disk off=%d len=%d: %w", off, length, err)
	}
	return nil
}

var zeroBlock [1 << 20]byte

func (d *File) writeZeroes(off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroBlock)))
		if _, err := d.f.WriteAt(zeroBlock[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Extents describes [off, off+length) as runs of data and holes, found with
// SEEK_DATA and SEEK_HOLE. A hole reads as zeroes. A block device, or a file
// system without SEEK_DATA, reports all data.
func (d *File) Extents(off, length int64) ([]nbd.Extent, error) {
	if off < 0 || length <= 0 || off+length > d.size {
		return nil, fmt.Errorf("extents disk off=%d len=%d: %w", off, length, ErrOutOfRange)
	}
	end := off + length
	if d.block {
		return []nbd.Extent{{Length: length}}, nil
	}
	var out []nbd.Extent
	pos := off
	for pos < end && len(out) < 1024 {
		data, err := unix.Seek(d.fd, pos, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				// No data from pos to the end of the file.
				out = append(out, nbd.Extent{Length: end - pos, Hole: true, Zero: true})
				return out, nil
			}
			if len(out) == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				return []nbd.Extent{{Length: length}}, nil
			}
			return nil, fmt.Errorf("extents disk off=%d: seek data: %w", pos, err)
		}
		if data > pos {
			n := min(data, end) - pos
			out = append(out, nbd.Extent{Length: n, Hole: true, Zero: true})
			pos += n
			continue
		}
		hole, err := unix.Seek(d.fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("extents disk off=%d: seek hole: %w", pos, err)
		}
		if hole <= pos { // cannot happen; be safe against a loop
			hole = end
		}
		n := min(hole, end) - pos
		out = append(out, nbd.Extent{Length: n})
		pos += n
	}
	return out, nil
}

// Close closes the store. It does not flush.
func (d *File) Close() error {
	if d.direct != nil {
		if err := d.direct.Close(); err != nil {
			d.f.Close()
			return fmt.Errorf("close disk: %w", err)
		}
	}
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("close disk: %w", err)
	}
	return nil
}

func fallocate(fd int, mode uint32, off, length int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, length)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		return nil
	}
}

// FileRange lets an NBD server send reads straight from the file with
// sendfile: the store's bytes at off are the file's bytes at off.
func (d *File) FileRange(off, length int64) (*os.File, int64, bool) {
	return d.f, off, true
}
