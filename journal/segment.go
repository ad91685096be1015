package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Segment files. A log's records live, encoded (AppendBinary's form,
// back to back), in files DIR/segments/<log id>/<first seq>.seg; a new
// file starts when the current one would pass Options.SegmentSize. The
// files are self-describing: a scan from a segment's start, verifying the
// chain, finds every record, so the segments are the log. Released
// segments are renamed into DIR/segments/free (up to
// Options.FreeSegments) and reused, since overwriting allocated blocks is
// cheaper than allocating new ones; their old bytes never pass a scan,
// which wants the next seq chained to the sum before it.
const (
	segmentsDir = "segments"
	freeDir     = "free"
	segExt      = ".seg"
)

// segment is one open segment file of a log. first, path and f are
// fixed; end, refs and dead are guarded by the log's mutex.
type segment struct {
	first uint64 // seq of its first record
	path  string
	f     *os.File
	end   int64         // offset after the last reserved record
	refs  int           // readers that pinned it
	dead  bool          // no longer part of the log: retire when refs is 0
	dw    *directWriter // set when its log writes it with direct I/O
}

func segName(first uint64) string { return fmt.Sprintf("%016x%s", first, segExt) }

// parseSegName returns the first seq a segment file name carries.
func parseSegName(name string) (uint64, bool) {
	hex, ok := strings.CutSuffix(name, segExt)
	if !ok || len(hex) != 16 {
		return 0, false
	}
	v, err := strconv.ParseUint(hex, 16, 64)
	return v, err == nil
}

// logSegDir is the directory of log id's segments.
func (s *Store) logSegDir(id uint32) string {
	return filepath.Join(s.dir, segmentsDir, fmt.Sprintf("%08x", id))
}

// listSegments returns the segments of log id, sorted by first seq, with
// their files open.
func (s *Store) listSegments(id uint32) ([]*segment, error) {
	dir := s.logSegDir(id)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list segments: %w", err)
	}
	var segs []*segment
	for _, e := range ents {
		first, ok := parseSegName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			for _, g := range segs {
				g.f.Close()
			}
			return nil, fmt.Errorf("open segment %s: %w", p, err)
		}
		segs = append(segs, &segment{first: first, path: p, f: f})
	}
	slices.SortFunc(segs, func(a, b *segment) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	return segs, nil
}

// newSegment opens a segment of log id starting at seq first, reusing a
// free segment file when there is one.
func (s *Store) newSegment(id uint32, first uint64) (*segment, error) {
	dir := s.logSegDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("new segment: %w", err)
	}
	p := filepath.Join(dir, segName(first))
	s.poolMu.Lock()
	for len(s.pool) > 0 {
		free := s.pool[len(s.pool)-1]
		s.pool = s.pool[:len(s.pool)-1]
		if err := os.Rename(free, p); err == nil {
			break
		}
	}
	s.poolMu.Unlock()
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("new segment %s: %w", p, err)
	}
	s.noteDirtyDir(dir)
	return &segment{first: first, path: p, f: f}, nil
}

// retire closes g's file and moves it to the free pool, or deletes it
// when the pool is full. The caller made sure nobody uses g any more.
func (s *Store) retire(g *segment) {
	g.closeDirect()
	_ = g.f.Close()
	s.recycle(g.path)
}

// recycle moves the closed segment file at path into the pool of free
// segments, or deletes it when the pool is full.
func (s *Store) recycle(path string) {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	if len(s.pool) < s.opts.FreeSegments {
		s.poolSeq++
		free := filepath.Join(s.dir, segmentsDir, freeDir, segName(s.poolSeq))
		if err := os.Rename(path, free); err == nil {
			s.pool = append(s.pool, free)
			return
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("journal remove segment", logKeyErr, err)
	}
}

// dropPool deletes the free segment files and returns how many it
// deleted.
func (s *Store) dropPool() int {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	n := 0
	for _, p := range s.pool {
		if err := os.Remove(p); err == nil || errors.Is(err, os.ErrNotExist) {
			n++
		}
	}
	s.pool = nil
	if n > 0 {
		s.log.Info("journal: free segments deleted to make room", "files", n)
	}
	return n
}

// openPool lists the free segments left by an earlier process.
func (s *Store) openPool() error {
	dir := filepath.Join(s.dir, segmentsDir, freeDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("segment pool: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("segment pool: %w", err)
	}
	for _, e := range ents {
		n, ok := parseSegName(e.Name())
		if !ok {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if len(s.pool) >= s.opts.FreeSegments {
			_ = os.Remove(p)
			continue
		}
		s.pool = append(s.pool, p)
		s.poolSeq = max(s.poolSeq, n)
	}
	return nil
}

// writev writes iov at off with as few pwritev calls as the kernel
// allows (IOV_MAX buffers each): the data goes from the callers' buffers
// straight into the page cache.
func (g *segment) writev(iov [][]byte, off int64) error {
	rc, err := g.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("write segment %s at %d: %w", g.path, off, err)
	}
	// Control, not Write: RawConn.Write takes the file's write lock.
	var werr error
	err = rc.Control(func(fd uintptr) {
		for len(iov) > 0 {
			n, e := unix.Pwritev(int(fd), iov[:min(len(iov), iovMax)], off)
			if e == unix.EINTR {
				continue
			}
			if e != nil {
				werr = e
				return
			}
			if n == 0 {
				werr = io.ErrShortWrite
				return
			}
			off += int64(n)
			for n > 0 && len(iov) > 0 {
				if n >= len(iov[0]) {
					n -= len(iov[0])
					iov = iov[1:]
					continue
				}
				iov[0] = iov[0][n:]
				n = 0
			}
		}
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("write segment %s at %d: %w", g.path, off, err)
	}
	return nil
}

// iovMax is Linux's limit of buffers per pwritev.
const iovMax = 1024

// readAt reads exactly len(b) bytes at off; a short file is ErrShort.
func (g *segment) readAt(b []byte, off int64) error {
	n, err := g.f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: segment %s ends %d bytes into a %d-byte record at %d", ErrShort, g.path, n, len(b), off)
	}
	return fmt.Errorf("read segment %s at %d: %w", g.path, off, err)
}

// headerAt reads the record header at off and returns the record's seq
// and encoded size; ok is false when the bytes there are not a header
// (the end of the segment's data, or garbage).
func (g *segment) headerAt(off int64) (seq uint64, size int64, ok bool) {
	var h [HeaderSize]byte
	if err := g.readAt(h[:], off); err != nil {
		return 0, 0, false
	}
	if h[0] != recordVersion {
		return 0, 0, false
	}
	n := binary.BigEndian.Uint32(h[50:])
	if n > MaxData {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(h[2:]), HeaderSize + int64(n), true
}

// countFrom counts the records whose headers follow each other with
// consecutive seqs from off onwards, starting at seq want (the last one
// possibly cut short by the end of the file): how many records a cut at
// off drops.
func (g *segment) countFrom(off int64, want uint64) int {
	fi, err := g.f.Stat()
	if err != nil {
		return 0
	}
	n := 0
	for {
		seq, size, ok := g.headerAt(off)
		if !ok || seq != want {
			return n
		}
		if off+size > fi.Size() {
			return n + 1 // a record cut short
		}
		n++
		want++
		off += size
	}
}
