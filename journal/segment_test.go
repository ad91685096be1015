package journal_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
)

// segments returns the paths of the segment files of the logs in dir (not
// the free ones), sorted, so by log and first seq.
func segments(t *testing.T, dir string) []string {
	t.Helper()
	all, err := filepath.Glob(filepath.Join(dir, "segments", "*", "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	var segs []string
	for _, p := range all {
		if filepath.Base(filepath.Dir(p)) != "free" {
			segs = append(segs, p)
		}
	}
	slices.Sort(segs)
	return segs
}

// copyDir copies the files of a journal that is open: a crash image, what
// kill -9 would leave (the page cache holds everything written). Badger
// may replace a file (a memtable flushed to a table) during the copy; the
// copy is then taken again, from scratch.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	for try := 0; ; try++ {
		dst := t.TempDir()
		err := copyTree(src, dst)
		if err == nil {
			return dst
		}
		if !errors.Is(err, fs.ErrNotExist) || try == 20 {
			t.Fatalf("copy journal: %v", err)
		}
	}
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}

func writeN(t *testing.T, l *journal.Log, n, size int) {
	t.Helper()
	for i := 0; i < n; i++ {
		seq := l.Head() + 1
		journaltest.Write(t, l, int64(seq)*512, payload(int(seq), size))
	}
}

// checkRecords reads every record of l and checks the count and payloads.
func checkRecords(t *testing.T, l *journal.Log, want int, size int) {
	t.Helper()
	recs := journaltest.Records(t, l, 0)
	if len(recs) != want {
		t.Fatalf("read %d records, want %d", len(recs), want)
	}
	for _, r := range recs {
		if string(r.Data) != string(payload(int(r.Seq), size)) {
			t.Errorf("seq %d: payload differs", r.Seq)
		}
	}
}

func TestRecoveryGarbageAfterTail(t *testing.T) {
	dir := t.TempDir()
	opts := journaltest.Options()
	s, err := journal.Open(context.Background(), dir, opts, journaltest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, journaltest.Log(t, s, "d"), 10, 1000)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs := segments(t, dir)
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("this is not a record, only bytes past the tail of the log.......")); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s2 := journaltest.Open(t, dir, opts)
	l := journaltest.Log(t, s2, "d")
	if rec := l.Recovery(); rec.Head != 10 || rec.Cut != 0 || rec.Torn != 0 {
		t.Errorf("Recovery = %+v, want head 10, nothing cut", rec)
	}
	writeN(t, l, 1, 1000)
	checkRecords(t, l, 11, 1000)
}

func TestRecoveryHalfWrittenRecord(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := journaltest.Options()
	s, err := journal.Open(ctx, dir, opts, journaltest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	l := journaltest.Log(t, s, "d")
	writeN(t, l, 10, 1000)
	recs := journaltest.Records(t, l, 10)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Record 11 as an interrupted pwrite leaves it: header and part of
	// the data.
	r := journal.Record{Seq: 11, Kind: journal.KindWrite, Off: 0, Len: 4096, Data: payload(11, 4096)}
	r.Seal(recs[0].Sum)
	b, err := r.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	segs := segments(t, dir)
	last := segs[len(segs)-1]
	st, err := os.Stat(last)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b[:journal.HeaderSize+1000]); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s2 := journaltest.Open(t, dir, opts)
	l2 := journaltest.Log(t, s2, "d")
	if rec := l2.Recovery(); rec.Head != 10 || rec.Cut != 0 || rec.Torn != 1 {
		t.Errorf("Recovery = %+v, want head 10, the torn record 11 dropped and not counted as damage", rec)
	}
	if st2, err := os.Stat(last); err != nil || st2.Size() != st.Size() {
		t.Errorf("segment after recovery: %v bytes (err %v), want truncated back to %d", st2.Size(), err, st.Size())
	}
	if seq := journaltest.Write(t, l2, 0, payload(11, 1000)); seq != 11 {
		t.Errorf("seq after the torn record = %d, want 11", seq)
	}
	checkRecords(t, l2, 11, 1000)
}

// TestRecoverySyncMark takes a crash image with records past the last
// sync and damages one record: past the sync mark it is a torn tail, at
// or below it damage.
func TestRecoverySyncMark(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := journaltest.Options()
	s := journaltest.Open(t, dir, opts)
	l := journaltest.Log(t, s, "d")
	writeN(t, l, 10, 1000)
	// A sync round records its mark after the callers return; the next
	// round starts only after that.
	for i := 0; i < 2; i++ {
		if err := l.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	writeN(t, l, 5, 1000)
	{
		s2, err := journal.Open(ctx, copyDir(t, dir), opts, journaltest.Logger())
		if err != nil {
			t.Fatal(err)
		}
		rec := journaltest.Log(t, s2, "d").Recovery()
		s2.Close()
		if rec.Head != 15 || rec.Cut != 0 || rec.Torn != 0 {
			t.Fatalf("crash image: Recovery = %+v, want all 15 records", rec)
		}
	}

	tests := []struct {
		name     string
		damage   uint64
		wantHead uint64
		wantCut  int
		wantTorn int
	}{
		{"past the sync mark", 13, 12, 0, 3},
		{"below the sync mark", 8, 7, 8, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := copyDir(t, dir)
			// Damage the record in the image through a store on it.
			s2, err := journal.Open(ctx, img, opts, journaltest.Logger())
			if err != nil {
				t.Fatal(err)
			}
			l2 := journaltest.Log(t, s2, "d")
			if err := l2.Tamper(tc.damage, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }); err != nil {
				t.Fatal(err)
			}
			// Take the image again before this store closes: its mark is
			// still that of the original's sync, 10.
			img2 := copyDir(t, img)
			s2.Close()
			s3 := journaltest.Open(t, img2, opts)
			l3 := journaltest.Log(t, s3, "d")
			rec := l3.Recovery()
			if rec.Head != tc.wantHead || rec.Cut != tc.wantCut || rec.Torn != tc.wantTorn {
				t.Errorf("Recovery = %+v, want head %d, cut %d, torn %d", rec, tc.wantHead, tc.wantCut, tc.wantTorn)
			}
			if tc.wantCut > 0 && (rec.CutAt != tc.damage || !errors.Is(rec.Err, journal.ErrCorrupt)) {
				t.Errorf("Recovery = %+v, want ErrCorrupt at %d", rec, tc.damage)
			}
			checkRecords(t, l3, int(tc.wantHead), 1000)
		})
	}
}

func TestRecoveryMissingSegment(t *testing.T) {
	opts := journaltest.Options()
	const size = 512 << 10
	for _, which := range []string{"middle", "last"} {
		t.Run(which, func(t *testing.T) {
			dir := t.TempDir()
			s, err := journal.Open(context.Background(), dir, opts, journaltest.Logger())
			if err != nil {
				t.Fatal(err)
			}
			writeN(t, journaltest.Log(t, s, "d"), 20, size)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			segs := segments(t, dir)
			if len(segs) < 3 {
				t.Fatalf("%d segments for 20 records of %d bytes, want at least 3", len(segs), size)
			}
			gone := segs[1]
			if which == "last" {
				gone = segs[len(segs)-1]
			}
			if err := os.Remove(gone); err != nil {
				t.Fatal(err)
			}
			// The segment's name is its first seq, in hex.
			var first uint64
			for _, c := range filepath.Base(gone)[:16] {
				first = first*16 + uint64(hexVal(c))
			}

			s2 := journaltest.Open(t, dir, opts)
			l := journaltest.Log(t, s2, "d")
			rec := l.Recovery()
			if rec.Head != first-1 || rec.CutAt != first || rec.Cut != int(20-first+1) || !errors.Is(rec.Err, journal.ErrCorrupt) {
				t.Errorf("Recovery = %+v, want head %d, cut of %d at %d for ErrCorrupt", rec, first-1, 20-first+1, first)
			}
			checkRecords(t, l, int(first-1), size)
			if seq := journaltest.Write(t, l, 0, payload(int(first), size)); seq != first {
				t.Errorf("next seq = %d, want %d", seq, first)
			}
		})
	}
}

func hexVal(c rune) int {
	if c >= 'a' {
		return int(c-'a') + 10
	}
	return int(c - '0')
}

// TestSegmentsReused checks that released segments go to the free pool
// and come back as new segments, and that their old bytes never pass for
// records, across reopens.
func TestSegmentsReused(t *testing.T) {
	dir := t.TempDir()
	opts := journaltest.Options()
	opts.FreeSegments = 4
	const size = 256 << 10
	total := 0
	for round := 0; round < 3; round++ {
		s, err := journal.Open(context.Background(), dir, opts, journaltest.Logger())
		if err != nil {
			t.Fatal(err)
		}
		l := journaltest.Log(t, s, "d")
		for i := 0; i < 100; i++ {
			writeN(t, l, 1, size)
			total++
			if i%10 == 9 {
				if err := l.SetHold("apply", l.Committed()-5); err != nil {
					t.Fatal(err)
				}
			}
		}
		if n := len(segments(t, dir)); n > 3 {
			t.Errorf("round %d: %d segments hold 5-15 records of %d bytes, want at most 3", round, n, size)
		}
		free, _ := filepath.Glob(filepath.Join(dir, "segments", "free", "*.seg"))
		if len(free) == 0 || len(free) > opts.FreeSegments {
			t.Errorf("round %d: %d free segments, want 1 to %d", round, len(free), opts.FreeSegments)
		}
		base, _ := l.Base()
		checkRecords(t, l, int(l.Head()-base), size)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s2 := journaltest.Open(t, dir, opts)
		l2 := journaltest.Log(t, s2, "d")
		if rec := l2.Recovery(); rec.Cut != 0 || rec.Torn != 0 || rec.Head != uint64(total) {
			t.Errorf("round %d: Recovery = %+v, want head %d, nothing cut", round, rec, total)
		}
		checkRecords(t, l2, int(l2.Head()-base), size)
		if err := s2.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzSegmentScan opens a log whose only segment holds arbitrary bytes:
// recovery must never panic, and what it keeps must read back whole and
// verified.
func FuzzSegmentScan(f *testing.F) {
	// Seeds: a real segment of three records, it cut short, it with a
	// flipped byte, and garbage.
	seedDir := f.TempDir()
	s, err := journal.Open(context.Background(), seedDir, journaltest.Options(), journaltest.Logger())
	if err != nil {
		f.Fatal(err)
	}
	l, err := s.Log("d")
	if err != nil {
		f.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		journaltest.Write(f, l, int64(i)*100, payload(i, 100*i))
	}
	if err := s.Close(); err != nil {
		f.Fatal(err)
	}
	all, _ := filepath.Glob(filepath.Join(seedDir, "segments", "00000001", "*.seg"))
	if len(all) != 1 {
		f.Fatalf("%d segments for 3 small records, want 1", len(all))
	}
	good, err := os.ReadFile(all[0])
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)-7])
	flipped := append([]byte(nil), good...)
	flipped[journal.HeaderSize+150] ^= 1
	f.Add(flipped)
	f.Add([]byte("not a segment at all"))

	f.Fuzz(func(t *testing.T, seg []byte) {
		dir := t.TempDir()
		// A fresh store gives its first log id 1.
		segDir := filepath.Join(dir, "segments", "00000001")
		if err := os.MkdirAll(segDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(segDir, "0000000000000001.seg"), seg, 0o600); err != nil {
			t.Fatal(err)
		}
		s := journaltest.Open(t, dir, journaltest.Options())
		l := journaltest.Log(t, s, "d")
		recs := journaltest.Records(t, l, 0)
		if got, want := uint64(len(recs)), l.Head(); got != want {
			t.Errorf("read %d records, want head %d", got, want)
		}
		if seq := journaltest.Write(t, l, 0, []byte("after")); seq != l.Head() || seq != uint64(len(recs))+1 {
			t.Errorf("append after recovery got seq %d, want %d", seq, len(recs)+1)
		}
	})
}

// TestFreeSegmentsYieldSpace: the pool of released segment files keeps
// their space for reuse only while the file system has room; an append
// that the reserve would refuse first deletes the pool, and then goes on.
func TestFreeSegmentsYieldSpace(t *testing.T) {
	dir := t.TempDir()
	opts := journaltest.Options()
	opts.MinFreeBytes = 100 << 20
	pooled := func() int {
		free, _ := filepath.Glob(filepath.Join(dir, "segments", "free", "*.seg"))
		return len(free)
	}
	// The file system has room only once the pool is gone.
	opts.FreeSpace = func(string) (int64, error) {
		if pooled() > 0 {
			return 50 << 20, nil
		}
		return 1 << 30, nil
	}
	if d := opts; d.FreeSegments != 0 {
		t.Fatalf("journaltest options set FreeSegments %d; the test wants the default", d.FreeSegments)
	}
	s := journaltest.Open(t, dir, opts)
	l := journaltest.Log(t, s, "d")
	const size = 1 << 20
	writeN(t, l, 15, size) // five segments of three records
	if err := l.SetHold("apply", l.Committed()-1); err != nil {
		t.Fatal(err)
	}
	if n := pooled(); n < 4 {
		t.Fatalf("%d free segments after releasing four full ones, want at least 4 (the default pool)", n)
	}
	time.Sleep(10 * time.Millisecond) // past the guard's cached statfs
	writeN(t, l, 1, size)
	if n := pooled(); n != 0 {
		t.Errorf("%d free segments after an append the reserve refused, want the pool deleted", n)
	}
	base, _ := l.Base()
	if got := l.Head() - base; got != 2 {
		t.Errorf("%d records kept, want 2", got)
	}
}

// TestDropLogRecyclesSegments: a dropped log's segment files join the
// pool (up to its size) for the next log to overwrite, and that log reads
// back only its own records, never the old bytes.
func TestDropLogRecyclesSegments(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := journaltest.Options()
	opts.FreeSegments = 3
	s := journaltest.Open(t, dir, opts)
	pooled := func() int {
		free, _ := filepath.Glob(filepath.Join(dir, "segments", "free", "*.seg"))
		return len(free)
	}
	const size = 1 << 20
	writeN(t, journaltest.Log(t, s, "old"), 15, size) // five segments
	if err := s.DropLog(ctx, "old"); err != nil {
		t.Fatalf("DropLog: %v", err)
	}
	if n := pooled(); n != opts.FreeSegments {
		t.Fatalf("%d free segments after dropping a log of five, want %d (the pool's size)", n, opts.FreeSegments)
	}
	if left := segments(t, dir); len(left) != 0 {
		t.Errorf("dropped log left %d segment files: %v", len(left), left)
	}
	l := journaltest.Log(t, s, "new")
	seq := journaltest.Write(t, l, 0, []byte("new log"))
	if n := pooled(); n != opts.FreeSegments-1 {
		t.Errorf("%d free segments after the new log's first segment, want %d (one reused)", n, opts.FreeSegments-1)
	}
	// Reopen: the scan of the reused file finds the one new record only.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = journaltest.Open(t, dir, opts)
	l = journaltest.Log(t, s, "new")
	if l.Head() != seq {
		t.Fatalf("reopened log head = %d, want %d: old bytes of the reused file passed the scan", l.Head(), seq)
	}
	var got []string
	if err := l.ReadFrom(ctx, 1, func(r journal.Record) error { got = append(got, string(r.Data)); return nil }); err != nil {
		t.Fatalf("ReadFrom: %v", err)
	}
	if len(got) != 1 || got[0] != "new log" {
		t.Errorf("reopened log reads %q, want only %q", got, "new log")
	}
}
