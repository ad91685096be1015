package journal_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
)

// TestAppendReceivedDirect: a log that receives records writes them with
// direct I/O, in batches that start and end anywhere in a block, across
// segments and a restart, and every record reads back intact, from the
// log, after a reopen and from a crash image.
func TestAppendReceivedDirect(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	opts := journaltest.Options() // 4 MiB segments
	src := journaltest.Open(t, "", opts)
	primary := journaltest.Log(t, src, "primary")
	const n = 400
	writeMixed(t, primary, rng, n, 40<<10, 50)
	recs := journaltest.Records(t, primary, 0)

	dir := t.TempDir()
	s := journaltest.Open(t, dir, opts)
	l := journaltest.Log(t, s, "replica")
	appendBatches := func(l *journal.Log, recs []journal.Record) {
		t.Helper()
		for len(recs) > 0 {
			k := min(1+rng.IntN(17), len(recs))
			if err := l.AppendReceived(ctx, recs[:k]); err != nil {
				t.Fatalf("AppendReceived seq=%d..%d: %v", recs[0].Seq, recs[k-1].Seq, err)
			}
			recs = recs[k:]
		}
	}
	check := func(what string, l *journal.Log, want []journal.Record) {
		t.Helper()
		got := journaltest.Records(t, l, 0)
		if len(got) != len(want) {
			t.Fatalf("%s: %d records, want %d", what, len(got), len(want))
		}
		for i := range got {
			if got[i].Seq != want[i].Seq || got[i].Sum != want[i].Sum || !bytes.Equal(got[i].Data, want[i].Data) {
				t.Fatalf("%s: record seq=%d differs from the primary's", what, want[i].Seq)
			}
		}
	}

	appendBatches(l, recs[:n/2])
	direct, total := journal.DirectSegments(l)
	if total < 2 || direct != total {
		t.Errorf("%d of %d segments written with direct I/O, want all, and more than one", direct, total)
	}
	check("first half", l, recs[:n/2])
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A new process takes the last segment's partial block from the file.
	s = journaltest.Open(t, dir, opts)
	l = journaltest.Log(t, s, "replica")
	appendBatches(l, recs[n/2:])
	check("after a reopen", l, recs)
	crash := copyDir(t, dir)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, crash} {
		s := journaltest.Open(t, d, opts)
		l := journaltest.Log(t, s, "replica")
		if rec := l.Recovery(); rec.Head != uint64(n) || rec.Cut != 0 || rec.Torn != 0 {
			t.Errorf("%s: Recovery = %+v, want head %d, nothing cut", d, rec, n)
		}
		check("reopened", l, recs)
	}
}
