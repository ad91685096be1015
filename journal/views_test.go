package journal_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
)

// writeMixed appends n write records of up to max bytes, every every-th
// of MaxData, so that records straddle blocks and segments.
func writeMixed(t *testing.T, l *journal.Log, rng *rand.Rand, n, max, every int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		size := rng.IntN(max)
		if i%every == 0 {
			size = journal.MaxData
		}
		journaltest.Write(t, l, int64(i)<<12, payload(i, size))
	}
}

// TestReadViews: ReadViews gives what ReadFrom gives, from any seq,
// across segments, and stops at a damaged record naming it, after
// passing on every record before it.
func TestReadViews(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 4))
	s := journaltest.Open(t, "", journaltest.Options()) // 4 MiB segments
	l := journaltest.Log(t, s, "d")
	const n = 300
	writeMixed(t, l, rng, n, 64<<10, 40)
	views := func(from uint64) ([]journal.Record, error) {
		var got []journal.Record
		err := l.ReadViews(ctx, from, func(r journal.Record) error {
			r.Data = bytes.Clone(r.Data) // the view is valid only here
			got = append(got, r)
			return nil
		})
		return got, err
	}
	for _, from := range []uint64{0, 1, 2, 39, 40, 41, 150, n} {
		want := journaltest.Records(t, l, from)
		got, err := views(from)
		if err != nil {
			t.Fatalf("ReadViews from %d: %v", from, err)
		}
		if len(got) != len(want) {
			t.Fatalf("ReadViews from %d: %d records, want %d", from, len(got), len(want))
		}
		for i := range got {
			if got[i].Seq != want[i].Seq || got[i].Sum != want[i].Sum || !bytes.Equal(got[i].Data, want[i].Data) {
				t.Fatalf("ReadViews from %d: seq %d differs from ReadFrom's", from, want[i].Seq)
			}
		}
	}
	if got, err := views(n + 1); err != nil || len(got) != 0 {
		t.Errorf("ReadViews past the head = %d records, %v; want none", len(got), err)
	}

	const bad = 77
	if err := l.Tamper(bad, func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b }); err != nil {
		t.Fatal(err)
	}
	got, err := views(50)
	if !errors.Is(err, journal.ErrCorrupt) {
		t.Fatalf("ReadViews over a damaged record = %v, want ErrCorrupt", err)
	}
	if len(got) != bad-50 || got[len(got)-1].Seq != bad-1 {
		t.Errorf("ReadViews passed %d records before the damaged seq %d, want %d", len(got), bad, bad-50)
	}
}
