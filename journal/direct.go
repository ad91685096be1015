package journal

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/tandem-dr/tandem/internal/aligned"
)

// Direct I/O for received records. The secondary's retention journal is
// written once and read rarely (views, verify, recovery), so a log that
// receives records (AppendReceived) writes its segments with O_DIRECT:
// the records go from one reused, aligned buffer to the device, and the
// page cache neither takes a copy nor has to write it back. Reads still
// go through the page cache (the kernel keeps the two coherent).
//
// Direct writes must start and end on block boundaries, and records do
// not. So a direct segment keeps its last partial block in memory and
// each write starts with it: the block is written again, with the same
// bytes where it held records before, which a torn write cannot change.
// The rest of the last block is zeroes, where a scan sees the end of the
// segment's data.
//
// The kernel drops the page-cache copy of what a direct write covers, but
// only as far as no reader holds the page at that instant. Today nothing
// reads a receiving log while it is being appended to (the replica reads
// its journal at open, to apply what the store lacks and to check the
// chain, each with the appender idle); a reader that will (views at a
// point in time) must read the blocks past the last commit it saw with
// O_DIRECT too, or between appends.

// directAlign is the offset, length and memory alignment of direct I/O.
const directAlign = aligned.Size

// directWriter is a segment's direct-I/O side.
type directWriter struct {
	f       *os.File // the segment file opened with O_DIRECT
	tailOff int64    // offset of the last partial block (aligned)
	tail    []byte   // its bytes that hold data: up to the segment's end
}

// openDirect opens g for direct writes. A file system that refuses
// O_DIRECT (tmpfs) leaves g writing through the page cache.
func (g *segment) openDirect() error {
	if g.dw != nil {
		return nil
	}
	f, err := os.OpenFile(g.path, os.O_WRONLY|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open segment %s for direct I/O: %w", g.path, err)
	}
	g.dw = &directWriter{f: f, tailOff: -1}
	return nil
}

// closeDirect closes g's direct-I/O file, if any.
func (g *segment) closeDirect() {
	if g.dw != nil {
		_ = g.dw.f.Close()
		g.dw = nil
	}
}

// writeDirect writes iov at off through g's direct file, by way of an
// aligned buffer from the store's pool. Writes to a segment come one at a
// time (a log has one writer) and each usually starts where the last
// ended; any other start reloads the block it falls in.
func (s *Store) writeDirect(g *segment, iov [][]byte, off int64) error {
	dw := g.dw
	if dw.tailOff < 0 || off != dw.tailOff+int64(len(dw.tail)) {
		if err := g.loadTail(off); err != nil {
			return err
		}
	}
	n := len(dw.tail)
	for _, b := range iov {
		n += len(b)
	}
	size := aligned.Up(n)
	scratch, _ := s.aligned.Get().(*[]byte)
	if scratch == nil {
		scratch = new([]byte)
	}
	defer s.aligned.Put(scratch)
	buf := aligned.Buf(scratch, size)
	p := copy(buf, dw.tail)
	for _, b := range iov {
		p += copy(buf[p:], b)
	}
	clear(buf[p:])
	if err := pwriteFull(dw.f, buf, dw.tailOff); err != nil {
		dw.tailOff = -1 // reload before the next write
		return fmt.Errorf("write segment %s at %d (direct): %w", g.path, off, err)
	}
	end := dw.tailOff + int64(n)
	last := end &^ (directAlign - 1)
	dw.tail = append(dw.tail[:0], buf[last-dw.tailOff:n]...)
	dw.tailOff = last
	return nil
}

// loadTail reads the block that offset off falls in, up to off, as the
// tail the next direct write starts with.
func (g *segment) loadTail(off int64) error {
	dw := g.dw
	dw.tailOff = off &^ (directAlign - 1)
	dw.tail = dw.tail[:0]
	if k := int(off - dw.tailOff); k > 0 {
		dw.tail = append(dw.tail, make([]byte, k)...)
		if _, err := g.f.ReadAt(dw.tail, dw.tailOff); err != nil {
			dw.tailOff = -1
			return fmt.Errorf("read segment %s block at %d: %w", g.path, off&^(directAlign-1), err)
		}
	}
	return nil
}

// pwriteFull writes all of b at off.
func pwriteFull(f *os.File, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := f.WriteAt(b, off)
		if err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}
