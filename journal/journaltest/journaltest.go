// Package journaltest provides helpers for tests that need a journal: a
// Store in a temporary directory closed at cleanup, and readers that
// collect a log's records. It is in the manner of net/http/httptest and
// is imported only by tests.
package journaltest

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/tandem-dr/tandem/journal"
)

// Options returns journal options sized for tests: small segments (so
// that tests cross segment boundaries), small memtables, no GC loop.
func Options() journal.Options {
	return journal.Options{
		SegmentSize:  4 << 20,
		MemTableSize: 4 << 20,
		GCInterval:   -1,
	}
}

// Logger returns a logger that writes warnings and errors to stderr.
func Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Open opens a Store in dir (a new temporary directory when dir is
// empty) and closes it when the test ends.
func Open(t testing.TB, dir string, opts journal.Options) *journal.Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := journal.Open(context.Background(), dir, opts, Logger())
	if err != nil {
		t.Fatalf("journal.Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close journal: %v", err)
		}
	})
	return s
}

// Log opens the log called name in s.
func Log(t testing.TB, s *journal.Store, name string) *journal.Log {
	t.Helper()
	l, err := s.Log(name)
	if err != nil {
		t.Fatalf("Store.Log(%q): %v", name, err)
	}
	return l
}

// Records reads every record of l from seq from onwards and fails the
// test on any error, a corrupt record included.
func Records(t testing.TB, l *journal.Log, from uint64) []journal.Record {
	t.Helper()
	var recs []journal.Record
	if err := l.ReadFrom(context.Background(), from, func(r journal.Record) error {
		recs = append(recs, r)
		return nil
	}); err != nil {
		t.Fatalf("ReadFrom(%d) on %s: %v", from, l.Name(), err)
	}
	return recs
}

// Write appends a write record and waits for its commit.
func Write(t testing.TB, l *journal.Log, off int64, data []byte) uint64 {
	t.Helper()
	p, err := l.Append(context.Background(), journal.Record{Kind: journal.KindWrite, Off: off, Len: int64(len(data)), Data: data})
	if err != nil {
		t.Fatalf("Append write off=%d: %v", off, err)
	}
	if err := p.Wait(context.Background()); err != nil {
		t.Fatalf("Wait seq=%d: %v", p.Seq(), err)
	}
	return p.Seq()
}
