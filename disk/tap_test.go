package disk_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
	"github.com/tandem-dr/tandem/nbd"
)

// faultStore wraps a File and fails writes with ENOSPC while full is set.
type faultStore struct {
	*disk.File
	full atomic.Bool
}

func (f *faultStore) WriteAt(p []byte, off int64) (int, error) {
	if f.full.Load() {
		return 0, fmt.Errorf("write disk off=%d: %w", off, syscall.ENOSPC)
	}
	return f.File.WriteAt(p, off)
}

type tapEnv struct {
	dir   string
	store *journal.Store
	log   *journal.Log
	file  *disk.File
	path  string
}

// newTapEnv opens a journal and a store file of size bytes in a new
// temporary directory.
func newTapEnv(t *testing.T, size int64, jopts journal.Options) *tapEnv {
	t.Helper()
	dir := t.TempDir()
	e := &tapEnv{dir: dir, path: filepath.Join(dir, "disk.img")}
	e.store = journaltest.Open(t, filepath.Join(dir, "journal"), jopts)
	e.log = journaltest.Log(t, e.store, "d")
	f, err := disk.OpenFile(e.path, disk.FileOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	e.file = f
	return e
}

// otherTap opens another disk of size bytes beside e's, named name, with
// its own log in e's journal store, and a tap over the two.
func (e *tapEnv) otherTap(t *testing.T, name string, size int64, opts disk.TapOptions) (*disk.Tap, *journal.Log) {
	t.Helper()
	l := journaltest.Log(t, e.store, name)
	f, err := disk.OpenFile(filepath.Join(e.dir, name+".img"), disk.FileOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return newTap(t, f, l, opts), l
}

func newTap(t *testing.T, s disk.Store, l *journal.Log, opts disk.TapOptions) *disk.Tap {
	t.Helper()
	tap, err := disk.NewTap(context.Background(), s, l, opts, journaltest.Logger())
	if err != nil {
		t.Fatalf("NewTap: %v", err)
	}
	t.Cleanup(func() { tap.Close(context.Background()) })
	return tap
}

func readAll(t *testing.T, b nbd.Backend) []byte {
	t.Helper()
	p := make([]byte, b.Size())
	if _, err := b.ReadAt(p, 0); err != nil {
		t.Fatalf("read whole disk: %v", err)
	}
	return p
}

// replayOnto applies every record of l from seq 1 to a zeroed image.
func replayOnto(t *testing.T, l *journal.Log, size int64) []byte {
	t.Helper()
	img := make([]byte, size)
	for _, r := range journaltest.Records(t, l, 1) {
		switch r.Kind {
		case journal.KindWrite:
			copy(img[r.Off:], r.Data)
		case journal.KindZero, journal.KindTrim:
			clear(img[r.Off : r.Off+r.Len])
		}
	}
	return img
}

func TestTapJournalsEveryWrite(t *testing.T) {
	ctx := context.Background()
	e := newTapEnv(t, 1<<20, journaltest.Options())
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1})
	a := bytes.Repeat([]byte{0xaa}, 8192)
	if n, err := tap.WriteAt(a, 4096); err != nil || n != len(a) {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if _, err := tap.WriteAtFUA([]byte("fua!"), 0); err != nil {
		t.Fatal(err)
	}
	if err := tap.Zero(8192, 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := tap.Trim(0, 4096); err != nil {
		t.Fatal(err)
	}
	if err := tap.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tap.WriteAt(a, 1<<20-100); !errors.Is(err, disk.ErrOutOfRange) {
		t.Errorf("write past the end = %v, want ErrOutOfRange", err)
	}
	recs := journaltest.Records(t, e.log, 1)
	kinds := []journal.Kind{journal.KindWrite, journal.KindWrite, journal.KindZero, journal.KindTrim}
	if len(recs) != len(kinds) {
		t.Fatalf("journal has %d records, want %d", len(recs), len(kinds))
	}
	for i, r := range recs {
		if r.Kind != kinds[i] {
			t.Errorf("record %d kind = %d, want %d", i+1, r.Kind, kinds[i])
		}
	}
	if got, want := readAll(t, tap), replayOnto(t, e.log, 1<<20); !bytes.Equal(got, want) {
		t.Errorf("store differs from the journal replayed onto zeroes")
	}
	got := make([]byte, 4096)
	tap.ReadAt(got, 4096)
	if !bytes.Equal(got, a[:4096]) {
		t.Errorf("read back %x…, want aa…", got[:4])
	}
	if err := tap.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tap.WriteAt(a, 0); !errors.Is(err, disk.ErrTapClosed) {
		t.Errorf("WriteAt after Close = %v, want ErrTapClosed", err)
	}
	if got := e.log.Holds()[disk.HoldApply]; got != 4 {
		t.Errorf("apply hold after Close = %d, want 4", got)
	}
	if got := e.log.Bytes(); got != 0 {
		t.Errorf("journal bytes after the final checkpoint = %d, want 0 (released)", got)
	}
}

func TestTapLargeWriteSplits(t *testing.T) {
	e := newTapEnv(t, 3*journal.MaxData, journaltest.Options())
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1})
	p := make([]byte, 2*journal.MaxData+5)
	for i := range p {
		p[i] = byte(i * 7)
	}
	if _, err := tap.WriteAt(p, 3); err != nil {
		t.Fatal(err)
	}
	if got := e.log.Head(); got != 3 {
		t.Errorf("records for a write of 2*MaxData+5 bytes = %d, want 3", got)
	}
	if got, want := readAll(t, tap), replayOnto(t, e.log, 3*journal.MaxData); !bytes.Equal(got, want) {
		t.Errorf("store differs from the journal replayed onto zeroes")
	}
}

// TestTapReplaysUnappliedRecords: records committed to the journal but
// never written to the store (a crash between the two) are applied by
// NewTap, and a corrupt one among them is reported and never applied.
func TestTapReplaysUnappliedRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	jdir := filepath.Join(dir, "journal")
	opts := journaltest.Options()
	s, err := journal.Open(ctx, jdir, opts, journaltest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	l := journaltest.Log(t, s, "d")
	for i := 0; i < 8; i++ {
		journaltest.Write(t, l, int64(i)*4096, bytes.Repeat([]byte{byte('a' + i)}, 4096))
	}
	// Record 7's payload is damaged on disk.
	if err := l.Tamper(7, func(b []byte) []byte { b[len(b)-10] ^= 0xff; return b }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := journaltest.Open(t, jdir, opts)
	l2 := journaltest.Log(t, s2, "d")
	if rec := l2.Recovery(); rec.CutAt != 7 || !errors.Is(rec.Err, journal.ErrCorrupt) {
		t.Errorf("Recovery = %+v, want the corrupt record 7 reported and cut", rec)
	}
	f, err := disk.OpenFile(filepath.Join(dir, "disk.img"), disk.FileOptions{Size: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tap := newTap(t, f, l2, disk.TapOptions{CheckpointEvery: -1})
	img := readAll(t, tap)
	for i := 0; i < 8; i++ {
		want := byte('a' + i)
		if i >= 6 {
			want = 0 // record 7 corrupt, record 8 after it: never applied
		}
		if got := img[i*4096+100]; got != want {
			t.Errorf("block %d = %q, want %q", i, got, want)
		}
	}
	if got := l2.Holds()[disk.HoldApply]; got != 6 {
		t.Errorf("apply hold after replay = %d, want 6", got)
	}
}

func TestTapConcurrentOverlappingWrites(t *testing.T) {
	const size = 256 << 10
	e := newTapEnv(t, size, journaltest.Options())
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1, CheckpointBytes: -1})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; i < 150; i++ {
				off := int64(r.IntN(size - 1))
				n := int64(1 + r.IntN(min(16<<10, size-int(off)-1)))
				var err error
				switch r.IntN(10) {
				case 0:
					err = tap.Zero(off, n, r.IntN(2) == 0)
				case 1:
					err = tap.Trim(off, n)
				case 2:
					err = tap.Flush(context.Background())
				case 3:
					_, err = tap.WriteAtFUA(bytes.Repeat([]byte{byte(w<<4 | i&15)}, int(n)), off)
				default:
					_, err = tap.WriteAt(bytes.Repeat([]byte{byte(w<<4 | i&15)}, int(n)), off)
				}
				if err != nil {
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
	got, want := readAll(t, tap), replayOnto(t, e.log, size)
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("store differs from the journal replayed onto zeroes at byte %d: %x, want %x", i, got[i], want[i])
			}
		}
	}
}

func TestTapFullJournalCheckpointsWhenOnlyApplyHolds(t *testing.T) {
	opts := journaltest.Options()
	opts.MaxBytes = 64 << 10
	e := newTapEnv(t, 1<<20, opts)
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1, CheckpointBytes: -1})
	p := make([]byte, 16<<10)
	for i := 0; i < 40; i++ {
		p[0] = byte(i)
		if _, err := tap.WriteAt(p, int64(i%64)*(16<<10)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if tap.Overflowed() {
		t.Errorf("tap overflowed although a checkpoint could free the journal")
	}
	if got := e.log.Head(); got != 40 {
		t.Errorf("journal head = %d, want 40 (every write journaled)", got)
	}
}

// TestTapCheckpointBytesFollowJournalLimit: by default a checkpoint is
// due after a quarter of the journal's limit when that is less than
// DefaultCheckpointBytes, so a small journal releases records long before
// it fills, without waiting for the periodic checkpoint.
func TestTapCheckpointBytesFollowJournalLimit(t *testing.T) {
	opts := journaltest.Options()
	opts.MaxBytes = 1 << 20
	e := newTapEnv(t, 1<<20, opts)
	store := &flushCounter{File: e.file}
	tap := newTap(t, store, e.log, disk.TapOptions{CheckpointEvery: -1})
	p := make([]byte, 16<<10)
	for i := range 15 { // 240 KiB and headers: under a quarter
		if _, err := tap.WriteAt(p, int64(i)*(16<<10)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	if n := store.flushes.Load(); n != 0 {
		t.Fatalf("store flushed %d times before a quarter of the journal was written, want 0", n)
	}
	if _, err := tap.WriteAt(p, 15*(16<<10)); err != nil { // past a quarter
		t.Fatal(err)
	}
	// The write past a quarter starts the checkpoint as it is journaled,
	// so the checkpoint covers the writes before it, and this one only
	// when the store had it by then.
	waitApplyHold(t, e.log, 15, "after a quarter of the journal's limit")
}

// waitApplyHold waits (at most 10 s) until a checkpoint moved l's apply
// hold to want or past it, and fails the test otherwise, saying when it
// expected it.
func waitApplyHold(t *testing.T, l *journal.Log, want uint64, when string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for l.Holds()[disk.HoldApply] < want {
		if time.Now().After(deadline) {
			t.Fatalf("apply hold = %d %s, want %d or more (a checkpoint)", l.Holds()[disk.HoldApply], when, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// flushCounter wraps a File and counts its Flushes.
type flushCounter struct {
	*disk.File
	flushes atomic.Int64
}

func (f *flushCounter) Flush(ctx context.Context) error {
	f.flushes.Add(1)
	return f.File.Flush(ctx)
}

// TestTapSkipsCheckpointsBehindReplication: while replication holds the
// journal further back than the store's checkpoint, a periodic checkpoint
// would free nothing, so the applier skips its fdatasync; once
// replication passes the apply hold the next one runs, and an explicit
// Checkpoint and Close always do.
func TestTapSkipsCheckpointsBehindReplication(t *testing.T) {
	ctx := context.Background()
	e := newTapEnv(t, 1<<20, journaltest.Options())
	if err := e.log.SetHold("replication", 0); err != nil {
		t.Fatal(err)
	}
	store := &flushCounter{File: e.file}
	topts := disk.TapOptions{CheckpointEvery: 2 * time.Millisecond, CheckpointBytes: 4096}
	tap, err := disk.NewTap(ctx, store, e.log, topts, journaltest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	write := func(i int) {
		t.Helper()
		p := bytes.Repeat([]byte{byte(i + 1)}, 16<<10)
		off := int64(i%64) * (16 << 10)
		if _, err := tap.WriteAt(p, off); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		copy(want[off:], p)
	}
	for i := range 20 {
		write(i)
	}
	time.Sleep(50 * time.Millisecond) // many applier periods
	if n := store.flushes.Load(); n != 0 {
		t.Errorf("store flushed %d times with replication holding every record, want 0", n)
	}
	if got := e.log.Holds()[disk.HoldApply]; got != 0 {
		t.Errorf("apply hold = %d with no checkpoint, want 0", got)
	}

	if err := e.log.SetHold("replication", 10); err != nil { // shipped half
		t.Fatal(err)
	}
	waitApplyHold(t, e.log, 20, "after replication passed it")

	for i := 20; i < 30; i++ {
		write(i)
	}
	if err := tap.Checkpoint(ctx); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if got := e.log.Holds()[disk.HoldApply]; got != 30 {
		t.Errorf("apply hold after an explicit Checkpoint = %d, want 30", got)
	}

	flushes := store.flushes.Load()
	for i := 30; i < 50; i++ {
		write(i)
	}
	time.Sleep(50 * time.Millisecond)
	if n := store.flushes.Load() - flushes; n != 0 {
		t.Errorf("store flushed %d times behind replication again, want 0", n)
	}
	// The journal keeps what the store may lack (a restart replays it
	// from the apply hold), and Close checkpoints it all.
	if got := e.log.Holds()[disk.HoldApply]; got != 30 {
		t.Errorf("apply hold = %d with checkpoints skipped, want 30", got)
	}
	if err := tap.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := e.log.Holds()[disk.HoldApply]; got != 50 {
		t.Errorf("apply hold after Close = %d, want 50", got)
	}
	if got := readAll(t, e.file); !bytes.Equal(got, want) {
		t.Errorf("store after Close differs from the writes")
	}
}

// heldTap opens a 1 MiB disk whose journal holds maxBytes, behind a
// replication hold that never moves, with a tap that runs no checkpoint
// of its own. The tap is left open: the tests play a crash.
func heldTap(t *testing.T, maxBytes int64) (*tapEnv, *disk.Tap, disk.TapOptions) {
	t.Helper()
	opts := journaltest.Options()
	opts.MaxBytes = maxBytes
	e := newTapEnv(t, 1<<20, opts)
	if err := e.log.SetHold("replication", 0); err != nil {
		t.Fatal(err)
	}
	topts := disk.TapOptions{CheckpointEvery: -1, CheckpointBytes: -1, RegionSize: 64 << 10}
	tap, err := disk.NewTap(context.Background(), e.file, e.log, topts, journaltest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	return e, tap, topts
}

// readAfterCrash plays a crash of heldTap's tap (it is never closed): a
// new tap opens the same journal and store, replays what it finds past
// the apply hold, and n bytes at off are read back.
func readAfterCrash(t *testing.T, e *tapEnv, topts disk.TapOptions, off int64, n int) []byte {
	t.Helper()
	tap := newTap(t, e.file, e.log, topts)
	got := make([]byte, n)
	if _, err := tap.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestTapOverflowNotRolledBackByReplay: a record journaled before the
// journal overflowed and not yet checkpointed (replication holds it, and
// no checkpoint ran) must not be replayed after a crash over a newer,
// unjournaled write to the same blocks: that would lose a write that was
// acknowledged and flushed.
func TestTapOverflowNotRolledBackByReplay(t *testing.T) {
	ctx := context.Background()
	e, tap, topts := heldTap(t, 3*(journal.HeaderSize+8192))
	old, newer := bytes.Repeat([]byte{1}, 8192), bytes.Repeat([]byte{2}, 8192)
	for i := range 3 {
		if _, err := tap.WriteAt(old, int64(i)*8192); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tap.WriteAt(newer, 8192); err != nil { // the journal is full: unjournaled
		t.Fatal(err)
	}
	if !tap.Overflowed() {
		t.Fatalf("the fourth write did not overflow the journal")
	}
	if err := tap.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	got := readAfterCrash(t, e, topts, 8192, 8192)
	if !bytes.Equal(got, newer) {
		t.Errorf("after a crash in overflow the block holds %d, the journaled write it replaced, want the flushed unjournaled write %d", got[0], newer[0])
	}
}

// TestTapOverflowBarrierWaitsForLateAppend: a write whose Append began
// before the journal overflowed, and commits after another write entered
// overflow (its smaller record still fits), is journaled too; the
// overflow's barrier must cover it, or a crash replays it over a newer,
// unjournaled and flushed write to the same block.
func TestTapOverflowBarrierWaitsForLateAppend(t *testing.T) {
	ctx := context.Background()
	e, tap, topts := heldTap(t, 2*(journal.HeaderSize+8192)+journal.HeaderSize+4096)
	const late = 512 << 10 // the block of the late Append
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	disk.SetBeforeAppend(tap, func(r journal.Record) {
		if r.Off == late {
			once.Do(func() { close(entered); <-release })
		}
	})
	for i := range 2 {
		if _, err := tap.WriteAt(bytes.Repeat([]byte{1}, 8192), int64(i)*8192); err != nil {
			t.Fatal(err)
		}
	}
	old, newer := bytes.Repeat([]byte{7}, 4096), bytes.Repeat([]byte{8}, 4096)
	lateDone := make(chan error, 1)
	go func() { _, err := tap.WriteAt(old, late); lateDone <- err }()
	<-entered
	// The journal has room for the late 4 KiB record, not for 8 KiB: this
	// write overflows while the late Append is still in progress.
	overflowDone := make(chan error, 1)
	go func() { _, err := tap.WriteAt(bytes.Repeat([]byte{2}, 8192), 16384); overflowDone <- err }()
	deadline := time.Now().Add(5 * time.Second)
	for !tap.Overflowed() {
		if time.Now().After(deadline) {
			t.Fatal("the 8 KiB write did not overflow the journal")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	for _, ch := range []chan error{lateDone, overflowDone} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if h := e.log.Head(); h != 3 {
		t.Fatalf("journal head %d; want 3 (the late write journaled)", h)
	}
	if _, err := tap.WriteAt(newer, late); err != nil { // overflow: unjournaled
		t.Fatal(err)
	}
	if err := tap.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	got := readAfterCrash(t, e, topts, late, 4096)
	if !bytes.Equal(got, newer) {
		t.Errorf("after a crash the block holds %d, the late journaled write, want the flushed unjournaled write %d", got[0], newer[0])
	}
}

func TestTapOverflowTracksDirtyRegions(t *testing.T) {
	ctx := context.Background()
	const rs = 64 << 10
	opts := journaltest.Options()
	opts.MaxBytes = 3 * (journal.HeaderSize + 8192)
	e := newTapEnv(t, 1<<20, opts)
	// Replication holds everything: the journal cannot be freed.
	if err := e.log.SetHold("replication", 0); err != nil {
		t.Fatal(err)
	}
	topts := disk.TapOptions{CheckpointEvery: -1, RegionSize: rs}
	tap, err := disk.NewTap(ctx, e.file, e.log, topts, journaltest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	block := func(b byte) []byte { return bytes.Repeat([]byte{b}, 8192) }
	for i := 0; i < 3; i++ {
		if _, err := tap.WriteAt(block(byte(i+1)), int64(i)*rs); err != nil {
			t.Fatal(err)
		}
	}
	if tap.Overflowed() {
		t.Fatalf("overflowed before the journal was full")
	}
	if _, err := tap.WriteAt(block(9), 5*rs+100); err != nil {
		t.Fatalf("write into a full journal failed: %v", err)
	}
	if _, err := tap.WriteAtFUA(block(10), 9*rs); err != nil {
		t.Fatalf("FUA write into a full journal failed: %v", err)
	}
	if err := tap.Zero(12*rs, rs, false); err != nil {
		t.Fatalf("zero into a full journal failed: %v", err)
	}
	if !tap.Overflowed() || !tap.NeedsResync() {
		t.Fatalf("Overflowed = %v, NeedsResync = %v after a full journal, want both", tap.Overflowed(), tap.NeedsResync())
	}
	if got := e.log.Head(); got != 3 {
		t.Errorf("journal head = %d, want 3 (overflow writes are not journaled)", got)
	}
	got := make([]byte, 8192)
	tap.ReadAt(got, 5*rs+100)
	if !bytes.Equal(got, block(9)) {
		t.Errorf("overflow write not readable")
	}
	want := []disk.Region{{Off: 5 * rs, Len: rs}, {Off: 9 * rs, Len: rs}, {Off: 12 * rs, Len: rs}}
	regs, gen := tap.DirtyRegions()
	if fmt.Sprint(regs) != fmt.Sprint(want) {
		t.Errorf("DirtyRegions = %v, want %v", regs, want)
	}
	if err := tap.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tap.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// A new tap over the same log (a restart) still knows.
	tap2 := newTap(t, e.file, e.log, topts)
	if !tap2.Overflowed() {
		t.Errorf("overflow state lost across a restart")
	}
	if regs2, _ := tap2.DirtyRegions(); fmt.Sprint(regs2) != fmt.Sprint(want) {
		t.Errorf("DirtyRegions after restart = %v, want %v", regs2, want)
	}
	// Resync: resume journaling, copy the regions, clear them. A region
	// written again after the snapshot stays dirty.
	if err := tap2.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	regs, gen = tap2.DirtyRegions()
	if err := e.log.SetHold("replication", 3); err != nil { // shipped
		t.Fatal(err)
	}
	if _, err := tap2.WriteAt(block(11), 9*rs); err != nil {
		t.Fatal(err)
	}
	if tap2.Overflowed() {
		t.Errorf("still overflowed after Resume with room in the journal")
	}
	if got := e.log.Head(); got != 4 {
		t.Errorf("journal head after Resume = %d, want 4", got)
	}
	if err := tap2.ClearDirty(ctx, regs, gen); err != nil {
		t.Fatal(err)
	}
	if regs, _ := tap2.DirtyRegions(); len(regs) != 0 {
		t.Errorf("DirtyRegions after ClearDirty = %v, want none", regs)
	}
	if tap2.NeedsResync() {
		t.Errorf("NeedsResync after a complete resync")
	}
}

func TestTapStoreENOSPC(t *testing.T) {
	ctx := context.Background()
	e := newTapEnv(t, 1<<20, journaltest.Options())
	fs := &faultStore{File: e.file}
	tap := newTap(t, fs, e.log, disk.TapOptions{CheckpointEvery: -1})
	if _, err := tap.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := tap.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	fs.full.Store(true)
	_, err := tap.WriteAt(bytes.Repeat([]byte{2}, 4096), 4096)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write to a full store = %v, want ENOSPC", err)
	}
	got := make([]byte, 4096)
	if _, err := tap.ReadAt(got, 0); err != nil || got[0] != 1 {
		t.Errorf("read of acknowledged data while full = %d, %v; want 1", got[0], err)
	}
	// The failed record is journaled: the apply hold must not pass it
	// while the store lacks it, and a checkpoint after space returns
	// repairs the store.
	if err := tap.Checkpoint(ctx); err == nil {
		t.Errorf("checkpoint repaired a store that is still full")
	}
	if hold := e.log.Holds()[disk.HoldApply]; hold >= 2 {
		t.Errorf("apply hold = %d passed the record the store refused", hold)
	}
	fs.full.Store(false)
	if err := tap.Checkpoint(ctx); err != nil {
		t.Fatalf("checkpoint after space returned: %v", err)
	}
	tap.ReadAt(got, 4096)
	if got[0] != 2 {
		t.Errorf("store not repaired from the journal: %d, want 2", got[0])
	}
	if hold := e.log.Holds()[disk.HoldApply]; hold != 2 {
		t.Errorf("apply hold after repair = %d, want 2", hold)
	}
}

type recordingAcker struct {
	mu   sync.Mutex
	seqs []uint64
}

func (a *recordingAcker) WaitAcked(ctx context.Context, seq uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seqs = append(a.seqs, seq)
	return errors.New("secondary away")
}

func TestTapAckerAndCut(t *testing.T) {
	ctx := context.Background()
	e := newTapEnv(t, 1<<20, journaltest.Options())
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1})
	a := &recordingAcker{}
	tap.SetAcker(a)
	if _, err := tap.WriteAt([]byte("x"), 0); err != nil {
		t.Errorf("write with a failing acker = %v, want success (acker policy)", err)
	}
	if err := tap.Zero(0, 10, true); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(a.seqs) != "[1 2]" {
		t.Errorf("acker asked for %v, want [1 2]", a.seqs)
	}
	tap.SetAcker(nil)

	tap2, l2 := e.otherTap(t, "d2", 1<<20, disk.TapOptions{CheckpointEvery: -1})
	seqs, err := disk.Cut(ctx, []*disk.Tap{tap, tap2}, []byte("group-cp"))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqs) != "[3 1]" {
		t.Errorf("Cut seqs = %v, want [3 1]", seqs)
	}
	recs := journaltest.Records(t, l2, 1)
	if len(recs) != 1 || recs[0].Kind != journal.KindMarker || string(recs[0].Data) != "group-cp" {
		t.Errorf("d2 journal = %+v, want one group-cp marker", recs)
	}
}

func TestReadOnly(t *testing.T) {
	e := newTapEnv(t, 1<<20, journaltest.Options())
	if _, err := e.file.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	ro := disk.ReadOnly(e.file)
	if _, err := ro.WriteAt([]byte("nope"), 0); !errors.Is(err, disk.ErrReadOnly) {
		t.Errorf("WriteAt = %v, want ErrReadOnly", err)
	}
	got := make([]byte, 4)
	if _, err := ro.ReadAt(got, 0); err != nil || string(got) != "data" {
		t.Errorf("ReadAt = %q, %v; want data", got, err)
	}
	if ro.Size() != 1<<20 {
		t.Errorf("Size = %d, want %d", ro.Size(), 1<<20)
	}
	if _, ok := ro.(nbd.Flusher); ok {
		t.Errorf("read-only backend offers Flush")
	}
	if _, ok := ro.(nbd.Zeroer); ok {
		t.Errorf("read-only backend offers Zero")
	}
	ext, err := ro.(nbd.Extenter).Extents(0, 1<<20)
	if err != nil || len(ext) == 0 {
		t.Errorf("Extents = %v, %v", ext, err)
	}
}

func TestTapJournalENOSPC(t *testing.T) {
	ctx := context.Background()
	var free atomic.Int64
	free.Store(1 << 30)
	opts := journaltest.Options()
	opts.MinFreeBytes = 100 << 20
	opts.FreeSpace = func(string) (int64, error) { return free.Load(), nil }
	e := newTapEnv(t, 1<<20, opts)
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1})
	if _, err := tap.WriteAtFUA(bytes.Repeat([]byte{7}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	free.Store(1 << 20)
	time.Sleep(10 * time.Millisecond)
	_, err := tap.WriteAt(bytes.Repeat([]byte{8}, 4096), 0)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write with the journal's disk full = %v, want ENOSPC", err)
	}
	got := make([]byte, 4096)
	if _, err := tap.ReadAt(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{7}, 4096)) {
		t.Errorf("read after the refused write = %d…, %v; want the acknowledged 7s", got[0], err)
	}
	if tap.Overflowed() {
		t.Errorf("a full disk switched the tap to overflow; it must fail the write instead")
	}
	free.Store(1 << 30)
	time.Sleep(10 * time.Millisecond)
	if _, err := tap.WriteAt(bytes.Repeat([]byte{9}, 4096), 0); err != nil {
		t.Fatalf("write after space returned: %v", err)
	}
	if err := tap.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := readAll(t, tap), replayOnto(t, e.log, 1<<20); !bytes.Equal(got, want) {
		t.Errorf("store differs from the journal replayed onto zeroes")
	}
}

// TestTapHoldsFromOpen checks that a new tap keeps the records it has not
// checkpointed even when another consumer's hold alone would release
// them: the apply hold exists from NewTap on.
func TestTapHoldsFromOpen(t *testing.T) {
	e := newTapEnv(t, 1<<20, journaltest.Options())
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1, CheckpointBytes: -1})
	if got, ok := e.log.Holds()[disk.HoldApply]; !ok || got != 0 {
		t.Fatalf("apply hold after NewTap = %d, %v; want 0, true", got, ok)
	}
	for i := 0; i < 4; i++ {
		if _, err := tap.WriteAt(bytes.Repeat([]byte{byte(i)}, 4096), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.log.SetHold("replication", e.log.Head()); err != nil {
		t.Fatal(err)
	}
	if base, _ := e.log.Base(); base != 0 {
		t.Errorf("base after the replication hold = %d, want 0 (the apply hold keeps the records)", base)
	}
}

// blockingAcker holds every WaitAcked until release is closed.
type blockingAcker struct {
	waiting chan uint64
	release chan struct{}
}

func (a *blockingAcker) WaitAcked(ctx context.Context, seq uint64) error {
	a.waiting <- seq
	<-a.release
	return nil
}

// TestTapAckerWaitHoldsNoLocks checks that a write waiting for the
// secondary's acknowledgement does not hold up Cut, Resume or a write to
// the same range.
func TestTapAckerWaitHoldsNoLocks(t *testing.T) {
	ctx := context.Background()
	e := newTapEnv(t, 1<<20, journaltest.Options())
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1})
	a := &blockingAcker{waiting: make(chan uint64, 4), release: make(chan struct{})}
	tap.SetAcker(a)
	done := make(chan error, 1)
	go func() {
		_, err := tap.WriteAt([]byte("sync"), 0)
		done <- err
	}()
	if seq := <-a.waiting; seq != 1 {
		t.Fatalf("acker asked for seq %d, want 1", seq)
	}
	tap.SetAcker(nil)
	finished := make(chan error, 1)
	go func() {
		if _, err := disk.Cut(ctx, []*disk.Tap{tap}, []byte("cp")); err != nil {
			finished <- err
			return
		}
		if err := tap.Resume(ctx); err != nil {
			finished <- err
			return
		}
		_, err := tap.WriteAt([]byte("next"), 0)
		finished <- err
	}()
	select {
	case err := <-finished:
		if err != nil {
			t.Errorf("Cut, Resume and a write while a write waits for its ack: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("Cut, Resume and a write stalled behind a write waiting for its ack")
	}
	close(a.release)
	if err := <-done; err != nil {
		t.Errorf("acknowledged write = %v, want nil", err)
	}
}

// TestTapMarkDirty: a range marked dirty (replication's reconcile) is a
// dirty region like an unjournaled write's, kept across a restart, and
// the tap keeps journaling.
func TestTapMarkDirty(t *testing.T) {
	ctx := context.Background()
	e := newTapEnv(t, 16<<20, journal.Options{})
	tap := newTap(t, e.file, e.log, disk.TapOptions{})
	if err := tap.MarkDirty(ctx, 15<<20, 2<<20); !errors.Is(err, disk.ErrOutOfRange) {
		t.Errorf("MarkDirty past the end: %v, want ErrOutOfRange", err)
	}
	if err := tap.MarkDirty(ctx, 3<<20, 100); err != nil {
		t.Fatal(err)
	}
	regs, _ := tap.DirtyRegions()
	if len(regs) != 1 || regs[0].Off > 3<<20 || regs[0].Off+regs[0].Len < 3<<20+100 {
		t.Fatalf("DirtyRegions = %v, want one covering [3 MiB, +100)", regs)
	}
	if !tap.NeedsResync() || tap.Overflowed() {
		t.Errorf("NeedsResync = %v, Overflowed = %v; want true, false", tap.NeedsResync(), tap.Overflowed())
	}
	if _, err := tap.WriteAt([]byte("journaled"), 0); err != nil || e.log.Head() != 1 {
		t.Errorf("write after MarkDirty: %v, journal head %d; want journaled (1)", err, e.log.Head())
	}
	if err := tap.Close(ctx); err != nil {
		t.Fatal(err)
	}
	tap2 := newTap(t, e.file, e.log, disk.TapOptions{})
	if regs2, _ := tap2.DirtyRegions(); fmt.Sprint(regs2) != fmt.Sprint(regs) {
		t.Errorf("DirtyRegions after restart = %v, want %v", regs2, regs)
	}
}

// TestCutGroupConsistent: Cut marks the taps of a group at one instant. A
// writer writes n to tap a, then n to tap b; at every cut the last write
// before a's marker is the one before b's marker or the next one, never
// one that b's journal has not reached or has passed.
func TestCutGroupConsistent(t *testing.T) {
	e := newTapEnv(t, 1<<20, journaltest.Options())
	a := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1})
	b, lb := e.otherTap(t, "b", 1<<20, disk.TapOptions{CheckpointEvery: -1})

	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 8)
		for n := uint64(1); ; n++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			binary.LittleEndian.PutUint64(buf, n)
			if _, err := a.WriteAt(buf, 0); err != nil {
				done <- err
				return
			}
			if _, err := b.WriteAt(buf, 0); err != nil {
				done <- err
				return
			}
		}
	}()
	const cuts = 100
	for i := range cuts {
		if _, err := disk.Cut(context.Background(), []*disk.Tap{a, b}, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// The value of the last write before each marker, by label.
	lastBefore := func(l *journal.Log) map[string]uint64 {
		m := map[string]uint64{}
		var last uint64
		for _, r := range journaltest.Records(t, l, 1) {
			switch r.Kind {
			case journal.KindWrite:
				last = binary.LittleEndian.Uint64(r.Data)
			case journal.KindMarker:
				m[string(r.Data)] = last
			}
		}
		return m
	}
	ma, mb := lastBefore(e.log), lastBefore(lb)
	moving := 0
	for i := range cuts {
		k := fmt.Sprint(i)
		va, vb := ma[k], mb[k]
		if va != vb && va != vb+1 {
			t.Errorf("cut %d: tap a at write %d, tap b at write %d; want b at a's write or the one before", i, va, vb)
		}
		if va > 0 {
			moving++
		}
	}
	if moving < cuts/2 {
		t.Errorf("only %d of %d cuts came after the first write: the writer did not run alongside", moving, cuts)
	}
}
