package replica_test

import (
	"bytes"
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
	"github.com/tandem-dr/tandem/replica"
	"github.com/tandem-dr/tandem/replication"
)

// chain builds sealed records that follow a position, as a primary's
// journal would.
type chain struct{ pos replication.Position }

func (c *chain) next(r journal.Record) journal.Record {
	r.Seq = c.pos.Seq + 1
	r.Time = time.Now().UTC()
	r.Seal(c.pos.Sum)
	c.pos = replication.Position{Seq: r.Seq, Sum: r.Sum}
	return r
}

func (c *chain) write(off int64, data []byte) journal.Record {
	return c.next(journal.Record{Kind: journal.KindWrite, Off: off, Len: int64(len(data)), Data: data})
}

func (c *chain) zero(off, n int64) journal.Record {
	return c.next(journal.Record{Kind: journal.KindZero, Off: off, Len: n})
}

// replicaSite is a secondary's journal and one replica Disk over it,
// reopened with reopen.
type replicaSite struct {
	t     testing.TB
	dir   string
	size  int64
	store *journal.Store
	log   *journal.Log
	disk  *replica.Disk
	// free, when set, is the space the journal sees on its file system.
	free *atomic.Int64
	// opts are the Disk's options at the next open (its Logger is set).
	opts replica.Options
}

func openReplica(t testing.TB, dir string, size int64) *replicaSite {
	t.Helper()
	s := &replicaSite{t: t, dir: dir, size: size}
	s.open()
	t.Cleanup(func() { s.close(false) })
	return s
}

func (s *replicaSite) open() {
	s.t.Helper()
	var err error
	opts := journaltest.Options()
	if s.free != nil {
		opts.MinFreeBytes = 1 << 20
		opts.FreeSpace = func(string) (int64, error) { return s.free.Load(), nil }
	}
	s.store, err = journal.Open(context.Background(), filepath.Join(s.dir, "journal"), opts, journaltest.Logger())
	if err != nil {
		s.t.Fatalf("open secondary journal: %v", err)
	}
	s.log, err = s.store.Log("replica/site-a/d")
	if err != nil {
		s.t.Fatalf("open replica log: %v", err)
	}
	ropts := s.opts
	ropts.Logger = journaltest.Logger()
	s.disk, err = replica.Open(context.Background(), filepath.Join(s.dir, "replica"), s.log, s.size, ropts)
	if err != nil {
		s.t.Fatalf("replica.Open: %v", err)
	}
}

// close closes the disk (or, crash, abandons it) and the journal.
func (s *replicaSite) close(crash bool) {
	s.t.Helper()
	if s.disk == nil {
		return
	}
	if crash {
		replica.Crash(s.disk)
	} else if err := s.disk.Close(context.Background()); err != nil {
		s.t.Errorf("close replica: %v", err)
	}
	if err := s.store.Close(); err != nil {
		s.t.Errorf("close secondary journal: %v", err)
	}
	s.disk, s.store, s.log = nil, nil, nil
}

func (s *replicaSite) reopen(crash bool) {
	s.t.Helper()
	s.close(crash)
	s.open()
}

// contents reads the whole replica at its consistent point.
func (s *replicaSite) contents() []byte {
	s.t.Helper()
	b := make([]byte, s.size)
	if err := s.disk.ReadConsistent(context.Background(), b, 0); err != nil {
		s.t.Fatalf("ReadConsistent: %v", err)
	}
	return b
}

// primarySite is a primary's journal, store file and tap.
type primarySite struct {
	t     testing.TB
	dir   string
	size  int64
	jopts journal.Options
	topts disk.TapOptions
	store *journal.Store
	log   *journal.Log
	file  *disk.File
	tap   *disk.Tap
}

func openPrimary(t testing.TB, dir string, size int64, jopts journal.Options, topts disk.TapOptions) *primarySite {
	t.Helper()
	p := &primarySite{t: t, dir: dir, size: size, jopts: jopts, topts: topts}
	p.open()
	t.Cleanup(p.close)
	return p
}

func (p *primarySite) open() {
	p.t.Helper()
	ctx := context.Background()
	var err error
	p.store, err = journal.Open(ctx, filepath.Join(p.dir, "journal"), p.jopts, journaltest.Logger())
	if err != nil {
		p.t.Fatalf("open primary journal: %v", err)
	}
	if p.log, err = p.store.Log("d"); err != nil {
		p.t.Fatalf("open primary log: %v", err)
	}
	if p.file, err = disk.OpenFile(filepath.Join(p.dir, "d.img"), disk.FileOptions{Size: p.size}); err != nil {
		p.t.Fatalf("open primary store: %v", err)
	}
	if p.tap, err = disk.NewTap(ctx, p.file, p.log, p.topts, journaltest.Logger()); err != nil {
		p.t.Fatalf("NewTap: %v", err)
	}
}

func (p *primarySite) close() {
	if p.tap == nil {
		return
	}
	if err := p.tap.Close(context.Background()); err != nil {
		p.t.Errorf("close tap: %v", err)
	}
	if err := p.file.Close(); err != nil {
		p.t.Errorf("close primary store: %v", err)
	}
	if err := p.store.Close(); err != nil {
		p.t.Errorf("close primary journal: %v", err)
	}
	p.tap = nil
}

func (p *primarySite) contents() []byte {
	p.t.Helper()
	b := make([]byte, p.size)
	if _, err := p.tap.ReadAt(b, 0); err != nil {
		p.t.Fatalf("read primary: %v", err)
	}
	return b
}

// firstDiff describes the first differing 4 KiB block of two images.
func firstDiff(a, b []byte) (int64, bool) {
	if len(a) != len(b) {
		return 0, true
	}
	for off := 0; off < len(a); off += 4096 {
		end := min(off+4096, len(a))
		if !bytes.Equal(a[off:end], b[off:end]) {
			return int64(off), true
		}
	}
	return 0, false
}

// readAll reads a whole nbd-style backend.
func readAll(t testing.TB, r interface {
	ReadAt([]byte, int64) (int, error)
}, size int64) []byte {
	t.Helper()
	b := make([]byte, size)
	if _, err := r.ReadAt(b, 0); err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
	return b
}

func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}
