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

// mixedLog returns a log in 4 MiB segments of n records from writeMixed,
// of up to 64 KiB and every 40th of MaxData; seed picks the sizes.
func mixedLog(t *testing.T, seed uint64, n int) *journal.Log {
	t.Helper()
	s := journaltest.Open(t, "", journaltest.Options()) // 4 MiB segments
	l := journaltest.Log(t, s, "d")
	writeMixed(t, l, rand.New(rand.NewPCG(seed, seed+1)), n, 64<<10, 40)
	return l
}

// damage flips the last stored byte of committed record seq.
func damage(t *testing.T, l *journal.Log, seq uint64) {
	t.Helper()
	if err := l.Tamper(seq, func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b }); err != nil {
		t.Fatal(err)
	}
}

// TestReadViews: ReadViews gives what ReadFrom gives, from any seq,
// across segments, and stops at a damaged record naming it, after
// passing on every record before it.
func TestReadViews(t *testing.T) {
	ctx := context.Background()
	const n = 300
	l := mixedLog(t, 3, n)
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
	damage(t, l, bad)
	got, err := views(50)
	if !errors.Is(err, journal.ErrCorrupt) {
		t.Fatalf("ReadViews over a damaged record = %v, want ErrCorrupt", err)
	}
	if len(got) != bad-50 || got[len(got)-1].Seq != bad-1 {
		t.Errorf("ReadViews passed %d records before the damaged seq %d, want %d", len(got), bad, bad-50)
	}
}

// TestAppendViews: AppendViews appends to buf exactly the AppendBinary
// form of the records ReadFrom gives, keeps what buf held, stops after the
// record that reaches the limit, leaves out a record fn refuses, and
// stops at a damaged record with every record before it in buf.
func TestAppendViews(t *testing.T) {
	ctx := context.Background()
	const n = 300
	l := mixedLog(t, 5, n)
	prefix := []byte("frame header")
	encode := func(recs []journal.Record) []byte {
		b := bytes.Clone(prefix)
		for _, r := range recs {
			var err error
			if b, err = r.AppendBinary(b); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	for _, from := range []uint64{0, 1, 2, 39, 40, 41, 150, n} {
		want := journaltest.Records(t, l, from)
		var seqs []uint64
		got, err := l.AppendViews(ctx, from, bytes.Clone(prefix), 1<<40, func(r journal.Record) error {
			seqs = append(seqs, r.Seq)
			return nil
		})
		if err != nil {
			t.Fatalf("AppendViews from %d: %v", from, err)
		}
		if len(seqs) != len(want) || !bytes.Equal(got, encode(want)) {
			t.Fatalf("AppendViews from %d: %d records, %d bytes; want %d records as AppendBinary encodes them, %d bytes",
				from, len(seqs), len(got), len(want), len(encode(want)))
		}
	}

	// The limit: reading stops after the record that reaches it.
	all := journaltest.Records(t, l, 1)
	limit := len(prefix) + 3<<20
	var k, size int
	for size = len(prefix); size < limit; k++ {
		size += journal.HeaderSize + len(all[k].Data)
	}
	got, err := l.AppendViews(ctx, 1, bytes.Clone(prefix), limit, func(journal.Record) error { return nil })
	if err != nil || !bytes.Equal(got, encode(all[:k])) {
		t.Fatalf("AppendViews to %d bytes = %d bytes, %v; want the first %d records, %d bytes", limit, len(got), err, k, size)
	}
	if got, err := l.AppendViews(ctx, 1, got, limit, nil); err != nil || len(got) != size {
		t.Errorf("AppendViews into a full buffer = %d bytes, %v; want it as it was", len(got), err)
	}

	// fn refuses a record: it stays out, and fn's error comes back as is.
	stop := errors.New("stop")
	got, err = l.AppendViews(ctx, 10, bytes.Clone(prefix), 1<<40, func(r journal.Record) error {
		if r.Seq == 20 {
			return stop
		}
		return nil
	})
	if err != stop || !bytes.Equal(got, encode(all[9:19])) {
		t.Errorf("AppendViews with fn refusing seq 20 = %d bytes, %v; want records 10 to 19 and fn's error", len(got), err)
	}

	const bad = 77
	damage(t, l, bad)
	got, err = l.AppendViews(ctx, 50, bytes.Clone(prefix), 1<<40, func(journal.Record) error { return nil })
	if !errors.Is(err, journal.ErrCorrupt) {
		t.Fatalf("AppendViews over a damaged record = %v, want ErrCorrupt", err)
	}
	if !bytes.Equal(got, encode(all[49:bad-1])) {
		t.Errorf("AppendViews over a damaged record kept %d bytes, want the records 50 to %d", len(got), bad-1)
	}
}
