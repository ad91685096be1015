package journal_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
)

func payload(seq int, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seq*31 + i)
	}
	return b
}

func TestAppendReadReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := journal.Open(ctx, dir, journaltest.Options(), journaltest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	l := journaltest.Log(t, s, "disk0")
	var ps []*journal.Pending
	for i := 1; i <= 100; i++ {
		p, err := l.Append(ctx, journal.Record{Kind: journal.KindWrite, Off: int64(i) * 4096, Len: 4096, Data: payload(i, 4096)})
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		if got, want := p.Seq(), uint64(i); got != want {
			t.Fatalf("seq = %d, want %d", got, want)
		}
		ps = append(ps, p)
	}
	if _, err := l.Append(ctx, journal.Record{Kind: journal.KindZero, Off: 0, Len: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, journal.Record{Kind: journal.KindMarker, Data: []byte("cp1")}); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if err := p.Wait(ctx); err != nil {
			t.Fatalf("Wait %d: %v", p.Seq(), err)
		}
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got, want := l.Head(), uint64(102); got != want {
		t.Errorf("Head = %d, want %d", got, want)
	}
	check := func(l *journal.Log) {
		t.Helper()
		recs := journaltest.Records(t, l, 0)
		if got, want := len(recs), 102; got != want {
			t.Fatalf("read %d records, want %d", got, want)
		}
		for i, r := range recs[:100] {
			if r.Seq != uint64(i+1) || r.Off != int64(i+1)*4096 || !bytes.Equal(r.Data, payload(i+1, 4096)) {
				t.Fatalf("record %d = seq %d off %d, want seq %d off %d and its payload", i, r.Seq, r.Off, i+1, (i+1)*4096)
			}
		}
		if r := recs[101]; r.Kind != journal.KindMarker || string(r.Data) != "cp1" {
			t.Errorf("last record = kind %d data %q, want marker cp1", r.Kind, r.Data)
		}
		if got := journaltest.Records(t, l, 50); len(got) != 53 || got[0].Seq != 50 {
			t.Errorf("ReadFrom(50) gave %d records starting %d, want 53 from 50", len(got), got[0].Seq)
		}
		if got := journaltest.Records(t, l, 200); len(got) != 0 {
			t.Errorf("ReadFrom(200) gave %d records, want 0", len(got))
		}
	}
	check(l)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, journal.Record{Kind: journal.KindMarker}); !errors.Is(err, journal.ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
	s2 := journaltest.Open(t, dir, journaltest.Options())
	l2 := journaltest.Log(t, s2, "disk0")
	if rec := l2.Recovery(); rec.Cut != 0 || rec.Head != 102 || rec.First != 1 {
		t.Errorf("Recovery = %+v, want First 1 Head 102 no cut", rec)
	}
	check(l2)
	seq := journaltest.Write(t, l2, 0, []byte("after reopen"))
	if seq != 103 {
		t.Errorf("first seq after reopen = %d, want 103", seq)
	}
	journaltest.Records(t, l2, 100)
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	journaltest.Open(t, dir, journaltest.Options())
	_, err := journal.Open(context.Background(), dir, journaltest.Options(), journaltest.Logger())
	if !errors.Is(err, journal.ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
}

func TestHoldsReleaseAndFull(t *testing.T) {
	ctx := context.Background()
	opts := journaltest.Options()
	opts.MaxBytes = 10 * (journal.HeaderSize + 1000)
	dir := t.TempDir()
	s := journaltest.Open(t, dir, opts)
	l := journaltest.Log(t, s, "d")
	for i := 1; i <= 10; i++ {
		journaltest.Write(t, l, int64(i), payload(i, 1000))
	}
	if got, want := l.Bytes(), opts.MaxBytes; got != want {
		t.Errorf("Bytes = %d, want %d", got, want)
	}
	_, err := l.Append(ctx, journal.Record{Kind: journal.KindWrite, Off: 0, Len: 1, Data: []byte{1}})
	if !errors.Is(err, journal.ErrFull) {
		t.Fatalf("Append past MaxBytes = %v, want ErrFull", err)
	}
	if got := l.Head(); got != 10 {
		t.Errorf("Head after ErrFull = %d, want 10", got)
	}
	if err := l.SetHold("replication", 2); err != nil {
		t.Fatal(err)
	}
	if seq, _ := l.Base(); seq != 2 {
		t.Errorf("Base after hold 2 = %d, want 2", seq)
	}
	if err := l.SetHold("apply", 4); err != nil {
		t.Fatal(err)
	}
	if seq, _ := l.Base(); seq != 2 {
		t.Errorf("Base after holds 4 and 2 = %d, want 2", seq)
	}
	if err := l.SetHold("replication", 6); err != nil {
		t.Fatal(err)
	}
	if seq, _ := l.Base(); seq != 4 {
		t.Errorf("Base after holds 4 and 6 = %d, want 4", seq)
	}
	if got, want := l.Bytes(), int64(6*(journal.HeaderSize+1000)); got != want {
		t.Errorf("Bytes after release = %d, want %d", got, want)
	}
	if err := l.ReadFrom(ctx, 3, func(journal.Record) error { return nil }); !errors.Is(err, journal.ErrReleased) {
		t.Errorf("ReadFrom released seq = %v, want ErrReleased", err)
	}
	if recs := journaltest.Records(t, l, 0); len(recs) != 6 || recs[0].Seq != 5 {
		t.Errorf("records after release: %d from %d, want 6 from 5", len(recs), recs[0].Seq)
	}
	if seq := journaltest.Write(t, l, 0, []byte{1}); seq != 11 {
		t.Errorf("seq after release = %d, want 11", seq)
	}
	if err := l.SetHold("apply", 99); err == nil {
		t.Errorf("SetHold past head succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := journaltest.Open(t, dir, opts)
	l2 := journaltest.Log(t, s2, "d")
	if got := l2.Holds(); got["apply"] != 4 || got["replication"] != 6 {
		t.Errorf("holds after reopen = %v, want apply 4 replication 6", got)
	}
	if recs := journaltest.Records(t, l2, 0); len(recs) != 7 || recs[0].Seq != 5 || recs[6].Seq != 11 {
		t.Errorf("records after reopen: %d, want 7 from 5 to 11", len(recs))
	}
	if err := l2.RemoveHold("replication"); err != nil {
		t.Fatal(err)
	}
	if err := l2.SetHold("apply", 11); err != nil {
		t.Fatal(err)
	}
	if got := l2.Bytes(); got != 0 {
		t.Errorf("Bytes with everything released = %d, want 0", got)
	}
	if got := journaltest.Records(t, l2, 12); len(got) != 0 {
		t.Errorf("ReadFrom past head: %d records", len(got))
	}
}

func TestAppendReceived(t *testing.T) {
	ctx := context.Background()
	s := journaltest.Open(t, "", journaltest.Options())
	primary := journaltest.Log(t, s, "primary")
	for i := 1; i <= 20; i++ {
		journaltest.Write(t, primary, int64(i)*512, payload(i, 512))
	}
	recs := journaltest.Records(t, primary, 0)

	t.Run("in order", func(t *testing.T) {
		l := journaltest.Log(t, s, "replica-ok")
		if err := l.AppendReceived(ctx, recs[:10]); err != nil {
			t.Fatal(err)
		}
		if err := l.AppendReceived(ctx, recs[10:]); err != nil {
			t.Fatal(err)
		}
		got := journaltest.Records(t, l, 0)
		if len(got) != 20 || got[19].Sum != recs[19].Sum || !got[19].Time.Equal(recs[19].Time) {
			t.Errorf("replica has %d records, want the primary's 20", len(got))
		}
	})
	bad := []struct {
		name string
		recs func() []journal.Record
	}{
		{"gap", func() []journal.Record { return []journal.Record{recs[0], recs[2]} }},
		{"duplicate", func() []journal.Record { return []journal.Record{recs[0], recs[0]} }},
		{"not first", func() []journal.Record { return recs[1:3] }},
		{"bad sum", func() []journal.Record {
			r := recs[1]
			r.Data = append([]byte(nil), r.Data...)
			r.Data[0] ^= 1
			return []journal.Record{recs[0], r}
		}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			l := journaltest.Log(t, s, "replica-"+tt.name)
			err := l.AppendReceived(ctx, tt.recs())
			if !errors.Is(err, journal.ErrCorrupt) {
				t.Errorf("AppendReceived = %v, want ErrCorrupt", err)
			}
			if got := l.Head(); got != 0 {
				t.Errorf("Head after refused batch = %d, want 0", got)
			}
		})
	}
	t.Run("verified by the caller", func(t *testing.T) {
		l := journaltest.Log(t, s, "replica-verified")
		if err := l.AppendVerified(ctx, recs[:10]); err != nil {
			t.Fatal(err)
		}
		if got := journaltest.Records(t, l, 0); len(got) != 10 || got[9].Sum != recs[9].Sum {
			t.Errorf("replica has %d records, want the primary's first 10", len(got))
		}
		// Linkage is still checked; the data's hash is the caller's.
		for _, bad := range [][]journal.Record{{recs[11]}, {recs[10], recs[10]}} {
			if err := l.AppendVerified(ctx, bad); !errors.Is(err, journal.ErrCorrupt) {
				t.Errorf("AppendVerified of a record that does not follow = %v, want ErrCorrupt", err)
			}
		}
		if got := l.Head(); got != 10 {
			t.Errorf("Head after refused batches = %d, want 10", got)
		}
	})
	t.Run("rebase mid-chain", func(t *testing.T) {
		l := journaltest.Log(t, s, "replica-rebase")
		if err := l.Rebase(ctx, recs[9].Seq, recs[9].Sum); err != nil {
			t.Fatal(err)
		}
		if err := l.AppendReceived(ctx, recs[10:]); err != nil {
			t.Fatal(err)
		}
		if got := journaltest.Records(t, l, 11); len(got) != 10 {
			t.Errorf("read %d records after rebase, want 10", len(got))
		}
		if err := l.Rebase(ctx, 1, 1); err == nil {
			t.Errorf("Rebase of a non-empty log succeeded")
		}
	})
}

func TestWaitAfter(t *testing.T) {
	ctx := context.Background()
	s := journaltest.Open(t, "", journaltest.Options())
	l := journaltest.Log(t, s, "d")
	done := make(chan error, 1)
	go func() { done <- l.WaitAfter(ctx, 0) }()
	select {
	case err := <-done:
		t.Fatalf("WaitAfter returned %v before any append", err)
	case <-time.After(20 * time.Millisecond):
	}
	journaltest.Write(t, l, 0, []byte("x"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitAfter: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitAfter did not return after an append")
	}
	tctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := l.WaitAfter(tctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitAfter(head) = %v, want DeadlineExceeded", err)
	}
}

func TestMetaAndDrop(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := journaltest.Open(t, dir, journaltest.Options())
	l := journaltest.Log(t, s, "d")
	if _, err := l.Meta("role"); !errors.Is(err, journal.ErrNotFound) {
		t.Errorf("Meta of unset key = %v, want ErrNotFound", err)
	}
	if err := l.SetMeta("role", []byte("primary")); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Meta("role"); err != nil || string(got) != "primary" {
		t.Errorf("Meta = %q, %v; want primary", got, err)
	}
	journaltest.Write(t, l, 0, []byte("abc"))
	other := journaltest.Log(t, s, "other")
	journaltest.Write(t, other, 0, []byte("keep"))
	if err := s.DropLog(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, journal.Record{Kind: journal.KindMarker}); !errors.Is(err, journal.ErrClosed) {
		t.Errorf("Append to dropped log = %v, want ErrClosed", err)
	}
	names, err := s.Logs()
	if err != nil || len(names) != 1 || names[0] != "other" {
		t.Errorf("Logs = %v, %v; want [other]", names, err)
	}
	l2 := journaltest.Log(t, s, "d")
	if l2.Head() != 0 {
		t.Errorf("recreated log head = %d, want 0", l2.Head())
	}
	if _, err := l2.Meta("role"); !errors.Is(err, journal.ErrNotFound) {
		t.Errorf("Meta of recreated log = %v, want ErrNotFound", err)
	}
	if got := journaltest.Records(t, other, 0); len(got) != 1 || string(got[0].Data) != "keep" {
		t.Errorf("other log lost its record: %v", got)
	}
}

func TestCorruptRecordDetected(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := journaltest.Options()
	s, err := journal.Open(ctx, dir, opts, journaltest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	l := journaltest.Log(t, s, "d")
	for i := 1; i <= 10; i++ {
		journaltest.Write(t, l, int64(i)*100, payload(i, 100))
	}
	// Flip one payload byte of record 6: its checksum no longer matches.
	if err := l.Tamper(6, func(b []byte) []byte { b[len(b)-1] ^= 0x40; return b }); err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	err = l.ReadFrom(ctx, 0, func(r journal.Record) error { seen = append(seen, r.Seq); return nil })
	if !errors.Is(err, journal.ErrCorrupt) {
		t.Fatalf("ReadFrom over corrupt record = %v, want ErrCorrupt", err)
	}
	if len(seen) != 5 || seen[4] != 5 {
		t.Errorf("ReadFrom passed seqs %v before the corrupt one, want 1..5", seen)
	}
	if want := "seq=6"; !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Errorf("error %q does not name %s", err, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := journaltest.Open(t, dir, opts)
	l2 := journaltest.Log(t, s2, "d")
	rec := l2.Recovery()
	if rec.CutAt != 6 || rec.Cut != 5 || !errors.Is(rec.Err, journal.ErrCorrupt) {
		t.Errorf("Recovery = %+v, want cut of 5 records at 6 for ErrCorrupt", rec)
	}
	if got := journaltest.Records(t, l2, 0); len(got) != 5 {
		t.Errorf("records after cut = %d, want 5", len(got))
	}
	if seq := journaltest.Write(t, l2, 0, []byte("next")); seq != 6 {
		t.Errorf("seq after cut = %d, want 6", seq)
	}
	journaltest.Records(t, l2, 0)
}

func TestConcurrentAppends(t *testing.T) {
	ctx := context.Background()
	s := journaltest.Open(t, "", journaltest.Options())
	logs := []*journal.Log{journaltest.Log(t, s, "a"), journaltest.Log(t, s, "b")}
	const workers, per = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			l := logs[w%2]
			for i := 0; i < per; i++ {
				p, err := l.Append(ctx, journal.Record{Kind: journal.KindWrite, Off: int64(w), Len: 8, Data: []byte(fmt.Sprintf("%02d-%05d", w, i))})
				if err != nil {
					errs <- err
					return
				}
				if i%50 == 0 {
					if err := l.Sync(ctx); err != nil {
						errs <- err
						return
					}
				}
				if err := p.Wait(ctx); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, l := range logs {
		recs := journaltest.Records(t, l, 0)
		if got, want := len(recs), workers/2*per; got != want {
			t.Errorf("log %s has %d records, want %d", l.Name(), got, want)
		}
		last := map[int64]string{}
		for _, r := range recs {
			if prev, ok := last[r.Off]; ok && string(r.Data) <= prev {
				t.Errorf("log %s: writer %d's records out of order: %q after %q", l.Name(), r.Off, r.Data, prev)
			}
			last[r.Off] = string(r.Data)
		}
	}
}

func TestFullFileSystemRefusesAppends(t *testing.T) {
	ctx := context.Background()
	var free atomic.Int64
	free.Store(1 << 30)
	opts := journaltest.Options()
	opts.MinFreeBytes = 100 << 20
	opts.FreeSpace = func(string) (int64, error) { return free.Load(), nil }
	s := journaltest.Open(t, "", opts)
	l := journaltest.Log(t, s, "d")
	journaltest.Write(t, l, 0, []byte("before"))

	free.Store(60 << 20) // under the reserve, over half of it
	time.Sleep(10 * time.Millisecond)
	_, err := l.Append(ctx, journal.Record{Kind: journal.KindWrite, Off: 0, Len: 5, Data: []byte("after")})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append on a full file system = %v, want ENOSPC", err)
	}
	if got := l.Head(); got != 1 {
		t.Errorf("Head after refused append = %d, want 1", got)
	}
	if err := l.SetHold("apply", 1); err != nil {
		t.Errorf("SetHold within half the reserve = %v, want success (checkpoints must still release)", err)
	}
	free.Store(10 << 20)
	time.Sleep(10 * time.Millisecond)
	if err := l.SetMeta("k", []byte("v")); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("SetMeta with almost nothing free = %v, want ENOSPC", err)
	}
	free.Store(1 << 30)
	time.Sleep(10 * time.Millisecond)
	if seq := journaltest.Write(t, l, 0, []byte("again")); seq != 2 {
		t.Errorf("seq after space returned = %d, want 2", seq)
	}
}

// TestBefore: the newest record older than a time, for retention: found
// by the records' own times (the primary's), committed records only,
// never below the base, and the same after a reopen.
func TestBefore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := journaltest.Options()
	s := journaltest.Open(t, dir, opts)
	l := journaltest.Log(t, s, "replica")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	var recs []journal.Record
	prev := uint64(0)
	for i, sec := range []int{10, 20, 20, 30, 40} { // seqs 1..5
		r := journal.Record{Seq: uint64(i + 1), Kind: journal.KindWrite, Off: int64(i) * 512, Len: 512, Data: payload(i, 512), Time: at(sec)}
		r.Seal(prev)
		prev = r.Sum
		recs = append(recs, r)
	}
	if got := l.Before(at(100)); got != 0 {
		t.Errorf("Before on an empty log = %d, want 0", got)
	}
	if err := l.AppendReceived(ctx, recs); err != nil {
		t.Fatalf("AppendReceived: %v", err)
	}
	check := func(what string) {
		t.Helper()
		base, _ := l.Base()
		for _, c := range []struct {
			sec  int
			want uint64
		}{{5, 0}, {10, 0}, {11, 1}, {20, 1}, {21, 3}, {30, 3}, {35, 4}, {41, 5}, {1000, 5}} {
			if got := l.Before(at(c.sec)); got != max(c.want, base) {
				t.Errorf("%s: Before(t0+%ds) = %d, want %d", what, c.sec, got, max(c.want, base))
			}
		}
	}
	check("appended")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = journaltest.Open(t, dir, opts)
	l = journaltest.Log(t, s, "replica")
	check("reopened")
	if err := l.SetHold("retention", 3); err != nil {
		t.Fatal(err)
	}
	if base, _ := l.Base(); base != 3 {
		t.Fatalf("base after releasing to 3 = %d", base)
	}
	check("released to 3")
}
