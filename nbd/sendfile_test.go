package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/tandem-dr/tandem/nbd"
	"github.com/tandem-dr/tandem/nbd/nbdtest"
)

// fileBackend is a file-backed backend offering FileRange, so large reads
// take the sendfile path.
type fileBackend struct {
	f       *os.File
	size    int64
	ranges  atomic.Int64
	flushes atomic.Int64
}

func (b *fileBackend) ReadAt(p []byte, off int64) (int, error)  { return b.f.ReadAt(p, off) }
func (b *fileBackend) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }
func (b *fileBackend) Size() int64                              { return b.size }
func (b *fileBackend) FileRange(off, length int64) (*os.File, int64, bool) {
	b.ranges.Add(1)
	return b.f, off, true
}

// TestSendfileReads pipelines small and large reads, with simple and
// structured replies: the sendfile replies interleave correctly with the
// batched ones.
func TestSendfileReads(t *testing.T) {
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // after the server has shut down
	be := &fileBackend{f: f, size: int64(len(data))}
	srv := nbdtest.NewServer(t, &nbd.SingleExport{Name: "disk", Backend: be}, nbd.ServerOptions{})
	for _, structured := range []bool{false, true} {
		r := dialRaw(t, srv.Socket)
		r.greet(3)
		if structured {
			r.opt(tOptStructured, nil)
			r.expectFinal(tOptStructured, tRepAck)
		}
		r.goExport("disk")
		type rq struct{ off, n int }
		var reqs []rq
		var wire []byte
		for i := 0; i < 40; i++ {
			q := rq{off: (i * 196613) % (7 << 20), n: 4096}
			if i%3 == 0 {
				q.n = 256<<10 + i
			}
			reqs = append(reqs, q)
			wire = append(wire, reqBytes(0, 0, uint64(i), uint64(q.off), uint32(q.n))...)
		}
		r.write(wire)
		for range reqs {
			var cookie uint64
			var got []byte
			if structured {
				c := r.chunk()
				if c.typ != 1 {
					t.Fatalf("structured=%v: chunk type %d, want OFFSET_DATA", structured, c.typ)
				}
				cookie, got = c.cookie, c.payload[8:]
				if off := binary.BigEndian.Uint64(c.payload); off != uint64(reqs[cookie].off) {
					t.Fatalf("cookie %d: offset %d, want %d", cookie, off, reqs[cookie].off)
				}
			} else {
				var e uint32
				cookie, e = r.simple()
				if e != 0 || cookie >= uint64(len(reqs)) {
					t.Fatalf("reply cookie %d error %d", cookie, e)
				}
				got = make([]byte, reqs[cookie].n)
				r.read(got)
			}
			q := reqs[cookie]
			if !bytes.Equal(got, data[q.off:q.off+q.n]) {
				t.Fatalf("structured=%v cookie %d (%d bytes at %d): wrong data", structured, cookie, q.n, q.off)
			}
		}
	}
	if be.ranges.Load() == 0 {
		t.Fatalf("no read took the sendfile path")
	}
}

// TestSpliceWrites pipelines large (spliced) and small writes, a large
// write past the end and a large FUA write, then reads everything back.
func TestSpliceWrites(t *testing.T) {
	const size = 8 << 20
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // after the server has shut down
	be := &flushFileBackend{fileBackend: fileBackend{f: f, size: size}}
	srv := nbdtest.NewServer(t, &nbd.SingleExport{Name: "disk", Backend: be}, nbd.ServerOptions{})
	want := make([]byte, size)
	r := dialRaw(t, srv.Socket)
	r.greet(3)
	r.goExport("disk")
	var wire []byte
	n := 0
	for i := 0; i < 24; i++ {
		l := 4096 + i
		switch {
		case i%6 == 0:
			l = 2<<20 + i*1000 // larger than a splice pipe: chunked
		case i%2 == 0:
			l = 300<<10 + i*1000
		}
		off := (i * 331777) % (size - l)
		p := bytes.Repeat([]byte{byte(i + 1)}, l)
		copy(want[off:], p)
		flags := uint16(0)
		if i%5 == 0 {
			flags = 1 // FUA
		}
		wire = append(wire, reqBytes(flags, 1, uint64(i), uint64(off), uint32(l))...)
		wire = append(wire, p...)
		n++
	}
	// A large write past the end: ENOSPC, and its payload is skipped.
	wire = append(wire, reqBytes(0, 1, 100, size-1000, 256<<10)...)
	wire = append(wire, make([]byte, 256<<10)...)
	go r.nc.Write(wire)
	for i := 0; i <= n; i++ {
		cookie, e := r.simple()
		if cookie == 100 {
			if e != 28 {
				t.Fatalf("write past the end: error %d, want ENOSPC (28)", e)
			}
			continue
		}
		if e != 0 {
			t.Fatalf("write cookie %d: error %d", cookie, e)
		}
	}
	got := make([]byte, size)
	for off := 0; off < size; off += 1 << 20 {
		r.write(reqBytes(0, 0, 1, uint64(off), 1<<20))
		if _, e := r.simple(); e != 0 {
			t.Fatalf("read back: error %d", e)
		}
		r.read(got[off : off+1<<20])
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("export content after pipelined writes differs from what was written")
	}
	if be.flushes.Load() == 0 {
		t.Fatalf("FUA writes did not flush")
	}
}

type flushFileBackend struct{ fileBackend }

func (b *flushFileBackend) Flush(ctx context.Context) error {
	b.flushes.Add(1)
	return b.f.Sync()
}

// TestSpliceWriteFileError makes the file refuse writes (opened read-only
// under a writable export): spliced writes fail with EIO, their payloads
// are drained, and the stream stays in sync.
func TestSpliceWriteFileError(t *testing.T) {
	const size = 8 << 20
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // after the server has shut down
	be := &fileBackend{f: f, size: size}
	srv := nbdtest.NewServer(t, &nbd.SingleExport{Name: "disk", Backend: be}, nbd.ServerOptions{})
	r := dialRaw(t, srv.Socket)
	r.greet(3)
	r.goExport("disk")
	for i, l := range []int{300 << 10, 3 << 20, 4096, 1 << 20} {
		r.write(append(reqBytes(0, 1, uint64(i), 0, uint32(l)), bytes.Repeat([]byte{1}, l)...))
		if cookie, e := r.simple(); cookie != uint64(i) || e != 5 {
			t.Fatalf("write of %d bytes to an unwritable file: cookie %d error %d, want cookie %d EIO (5)", l, cookie, e, i)
		}
	}
	r.write(reqBytes(0, 0, 9, 0, 4096))
	if cookie, e := r.simple(); cookie != 9 || e != 0 {
		t.Fatalf("read after failed writes: cookie %d error %d", cookie, e)
	}
	r.read(make([]byte, 4096))
}
