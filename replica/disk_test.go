package replica_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replica"
	"github.com/tandem-dr/tandem/replication"
)

const testSize = 1 << 20

// model is the expected replica: the consistent image and the pending
// sync's staged regions and records.
type model struct {
	img    []byte
	staged []byte // image of the sync: nil outside one
}

func newModel() *model { return &model{img: make([]byte, testSize)} }

func (m *model) begin(full bool) {
	m.staged = append([]byte(nil), m.img...)
	if full {
		clear(m.staged)
	}
}

func apply(img []byte, r journal.Record) {
	switch r.Kind {
	case journal.KindWrite:
		copy(img[r.Off:], r.Data)
	case journal.KindZero, journal.KindTrim:
		clear(img[r.Off : r.Off+r.Len])
	}
}

func mustState(t *testing.T, d *replica.Disk) replication.SinkState {
	t.Helper()
	st, err := d.State(context.Background())
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	return st
}

func checkImage(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if off, diff := firstDiff(got, want); diff {
		t.Fatalf("%s: differs from the expected image at off=%d", what, off)
	}
}

// fullSync runs an initial sync of m's image-to-be through the sink
// directly: two regions, then two records after the base.
func fullSync(t *testing.T, s *replicaSite, m *model, c *chain) {
	t.Helper()
	ctx := context.Background()
	d := s.disk
	m.begin(true)
	if err := d.BeginSync(ctx, replication.SyncInfo{ID: 1, Full: true, Base: c.pos, Total: testSize}); err != nil {
		t.Fatalf("BeginSync: %v", err)
	}
	if got := mustState(t, d); got.Head != c.pos || got.Sync == nil || got.Initialized {
		t.Fatalf("State after BeginSync = %+v, want head %+v, a sync, not initialized", got, c.pos)
	}
	for _, off := range []int64{0, 256 << 10} {
		data := fill(64<<10, byte(off>>10)+1)
		if err := d.WriteRegion(ctx, off, data); err != nil {
			t.Fatalf("WriteRegion off=%d: %v", off, err)
		}
		copy(m.staged[off:], data)
	}
	if got := s.contents(); !isZeroes(got) {
		t.Fatalf("a staged region shows in the replica before the commit")
	}
	if err := d.SyncProgress(ctx, 320<<10); err != nil {
		t.Fatalf("SyncProgress: %v", err)
	}
	recs := []journal.Record{c.write(32<<10, fill(8<<10, 99)), c.zero(256<<10, 4096)}
	if err := d.EndCopy(ctx, c.pos); err != nil {
		t.Fatalf("EndCopy: %v", err)
	}
	if err := d.AppendReceived(ctx, recs); err != nil {
		t.Fatalf("AppendReceived during sync: %v", err)
	}
	for _, r := range recs {
		apply(m.staged, r)
	}
	if got := mustState(t, d); got.Consistent != 0 || got.Head != c.pos {
		t.Fatalf("State before commit = %+v, want consistent 0 and head %+v", got, c.pos)
	}
	if err := d.CommitSync(ctx); err != nil {
		t.Fatalf("CommitSync: %v", err)
	}
	m.img, m.staged = m.staged, nil
	if got := mustState(t, d); !got.Initialized || got.Sync != nil || got.Consistent != c.pos.Seq {
		t.Fatalf("State after commit = %+v, want initialized at seq=%d", got, c.pos.Seq)
	}
	checkImage(t, "replica after full sync", s.contents(), m.img)
}

// syncedReplica opens a replica in a new directory and runs fullSync on
// it, from a chain at seq 10.
func syncedReplica(t *testing.T) (*replicaSite, *chain, *model) {
	t.Helper()
	s := openReplica(t, t.TempDir(), testSize)
	c := &chain{pos: replication.Position{Seq: 10, Sum: 0x99}}
	m := newModel()
	fullSync(t, s, m, c)
	return s, c, m
}

func isZeroes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func TestDiskSyncStreamReopen(t *testing.T) {
	ctx := context.Background()
	s := openReplica(t, t.TempDir(), testSize)
	c := &chain{pos: replication.Position{Seq: 40, Sum: 0x1234}}
	if err := s.disk.AppendReceived(ctx, []journal.Record{c.write(0, []byte("x"))}); !errors.Is(err, replica.ErrNoSync) {
		t.Fatalf("AppendReceived before an initial sync = %v, want ErrNoSync", err)
	}
	c = &chain{pos: replication.Position{Seq: 40, Sum: 0x1234}}
	m := newModel()
	fullSync(t, s, m, c)

	for i := 0; i < 20; i++ {
		r := c.write(int64(i)*4096*3, fill(5000, byte(i)))
		if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
			t.Fatalf("AppendReceived seq=%d: %v", r.Seq, err)
		}
		apply(m.img, r)
	}
	checkImage(t, "replica while streaming", s.contents(), m.img)
	checkImage(t, "NBD reads of the replica", readAll(t, s.disk, testSize), m.img)
	if got := mustState(t, s.disk); got.Consistent != c.pos.Seq || got.Head != c.pos {
		t.Fatalf("State = %+v, want consistent and head at %+v", got, c.pos)
	}
	if _, err := s.disk.WriteAt([]byte{1}, 0); err == nil {
		t.Fatalf("WriteAt on a replica succeeded, want a read-only error")
	}

	s.reopen(true) // a crash: Open replays what the store may lack
	if got := mustState(t, s.disk); got.Consistent != c.pos.Seq || !got.Initialized {
		t.Fatalf("State after reopen = %+v, want consistent at seq=%d", got, c.pos.Seq)
	}
	checkImage(t, "replica after reopen", s.contents(), m.img)
	through, err := s.disk.CheckChain(ctx)
	if err != nil || through != c.pos.Seq {
		t.Fatalf("CheckChain = %d, %v; want %d, nil", through, err, c.pos.Seq)
	}

	// Retention: records stay until released, and never past the head.
	if base, _ := s.log.Base(); base != 40 {
		t.Fatalf("journal base = %d before Release, want the sync base 40", base)
	}
	if err := s.disk.Release(ctx, 50); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if base, _ := s.log.Base(); base != 50 {
		t.Fatalf("journal base after Release(50) = %d, want 50", base)
	}
	if err := s.disk.Release(ctx, c.pos.Seq+100); err != nil {
		t.Fatalf("Release past the head: %v", err)
	}
	if base, _ := s.log.Base(); base != c.pos.Seq {
		t.Fatalf("journal base after Release past the head = %d, want %d", base, c.pos.Seq)
	}
	r := c.write(0, []byte("after release"))
	if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
		t.Fatalf("AppendReceived after release: %v", err)
	}
	apply(m.img, r)
	s.reopen(false)
	checkImage(t, "replica after release and reopen", s.contents(), m.img)
}

// resyncStage begins a resync over an initialized replica whose base
// skips records the replica never got, stages regions and records, and
// returns the expected image after the commit.
func resyncStage(t *testing.T, s *replicaSite, m *model, c *chain) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 3; i++ { // records lost to an overflow on the primary
		c.write(int64(i)<<16, fill(100, 7))
	}
	m.begin(false)
	if err := s.disk.BeginSync(ctx, replication.SyncInfo{ID: 2, Base: c.pos, Total: 3 << 16}); err != nil {
		t.Fatalf("BeginSync: %v", err)
	}
	data := fill(1<<16, 42)
	if err := s.disk.WriteRegion(ctx, 0, data); err != nil {
		t.Fatalf("WriteRegion: %v", err)
	}
	copy(m.staged, data)
	if err := s.disk.ZeroRegion(ctx, 1<<16, 1<<16); err != nil {
		t.Fatalf("ZeroRegion: %v", err)
	}
	clear(m.staged[1<<16 : 2<<16])
	if err := s.disk.WriteRegion(ctx, 256<<10, data[:4096]); err != nil {
		t.Fatalf("WriteRegion: %v", err)
	}
	copy(m.staged[256<<10:], data[:4096])
	checkImage(t, "replica during resync", s.contents(), m.img)
	if err := s.disk.SyncProgress(ctx, 260<<10); err != nil {
		t.Fatalf("SyncProgress: %v", err)
	}
	if err := s.disk.EndCopy(ctx, replication.Position{Seq: c.pos.Seq + 2}); err != nil {
		t.Fatalf("EndCopy: %v", err)
	}
	recs := []journal.Record{c.write(4096, fill(300, 3)), c.zero(0, 512)}
	if err := s.disk.AppendReceived(ctx, recs); err != nil {
		t.Fatalf("AppendReceived: %v", err)
	}
	for _, r := range recs {
		apply(m.staged, r)
	}
	checkImage(t, "replica before resync commit", s.contents(), m.img)
}

func TestDiskCommitCrash(t *testing.T) {
	for _, full := range []bool{true, false} {
		for _, point := range []string{replica.FaultIntent, replica.FaultCopied, replica.FaultApplied} {
			for _, inPlace := range []bool{false, true} {
				t.Run(fmt.Sprintf("full=%v/%s/recover=%v", full, point, inPlace), func(t *testing.T) {
					testCommitCrash(t, full, point, inPlace)
				})
			}
		}
	}
}

// testCommitCrash fails a sync's commit at point, then reopens the
// replica as after a crash or, inPlace, has the broken Disk recover
// itself: either way the commit completes.
func testCommitCrash(t *testing.T, full bool, point string, inPlace bool) {
	ctx := context.Background()
	s := openReplica(t, t.TempDir(), testSize)
	m := newModel()
	c := &chain{}
	if full {
		// The first full sync crashes.
		crashCommit(t, s, point, func() { fullSyncStaged(t, s, m, c) })
	} else {
		fullSync(t, s, m, c)
		crashCommit(t, s, point, func() { resyncStage(t, s, m, c) })
	}
	if inPlace {
		replica.SetFault(s.disk, nil)
		if err := s.disk.Recover(ctx); err != nil {
			t.Fatalf("Recover: %v", err)
		}
		if err := replica.Broken(s.disk); err != nil {
			t.Fatalf("Broken after Recover = %v, want nil", err)
		}
	} else {
		s.reopen(true)
	}
	st := mustState(t, s.disk)
	if st.Sync != nil || !st.Initialized || st.Consistent != c.pos.Seq {
		t.Fatalf("State after recovery = %+v, want the sync committed at seq=%d", st, c.pos.Seq)
	}
	m.img = m.staged
	checkImage(t, "replica after the commit completed at recovery", s.contents(), m.img)
	r := c.write(100, []byte("next"))
	if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
		t.Fatalf("AppendReceived after completed commit: %v", err)
	}
	apply(m.img, r)
	checkImage(t, "replica streaming after the commit", s.contents(), m.img)
}

// fullSyncStaged is fullSync up to (not including) the commit.
func fullSyncStaged(t *testing.T, s *replicaSite, m *model, c *chain) {
	t.Helper()
	ctx := context.Background()
	m.begin(true)
	if err := s.disk.BeginSync(ctx, replication.SyncInfo{ID: 9, Full: true, Base: c.pos}); err != nil {
		t.Fatalf("BeginSync: %v", err)
	}
	data := fill(100<<10, 5)
	if err := s.disk.WriteRegion(ctx, 512<<10, data); err != nil {
		t.Fatalf("WriteRegion: %v", err)
	}
	copy(m.staged[512<<10:], data)
	if err := s.disk.SyncProgress(ctx, 612<<10); err != nil {
		t.Fatalf("SyncProgress: %v", err)
	}
	r := c.write(520<<10, fill(10, 1))
	if err := s.disk.EndCopy(ctx, c.pos); err != nil {
		t.Fatalf("EndCopy: %v", err)
	}
	if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
		t.Fatalf("AppendReceived: %v", err)
	}
	apply(m.staged, r)
}

var errCrash = errors.New("injected crash")

// crashCommit stages a sync with stage, then fails its commit at point.
func crashCommit(t *testing.T, s *replicaSite, point string, stage func()) {
	t.Helper()
	stage()
	replica.SetFault(s.disk, func(p string) error {
		if p == point {
			return errCrash
		}
		return nil
	})
	if err := s.disk.CommitSync(context.Background()); !errors.Is(err, errCrash) {
		t.Fatalf("CommitSync with a crash at %s = %v, want the injected crash", point, err)
	}
	if _, err := s.disk.State(context.Background()); !errors.Is(err, replica.ErrBroken) {
		t.Fatalf("State after a failed commit = %v, want ErrBroken", err)
	}
}

func TestDiskCrashMidSync(t *testing.T) {
	ctx := context.Background()
	s := openReplica(t, t.TempDir(), testSize)
	m := newModel()
	c := &chain{}
	fullSync(t, s, m, c)
	for i := 0; i < 3; i++ {
		c.write(int64(i)<<16, fill(100, 7))
	}
	m.begin(false)
	info := replication.SyncInfo{ID: 3, Base: c.pos, Total: 4 << 16}
	if err := s.disk.BeginSync(ctx, info); err != nil {
		t.Fatalf("BeginSync: %v", err)
	}
	s.reopen(true) // crash before anything was copied
	st := mustState(t, s.disk)
	if st.Sync == nil || st.Sync.ID != 3 || st.Sync.CopiedThrough != 0 || st.Head != c.pos {
		t.Fatalf("State after a crash at BeginSync = %+v, want sync 3 from the start at head %+v", st, c.pos)
	}
	a, b := fill(1<<16, 1), fill(1<<16, 2)
	if err := s.disk.WriteRegion(ctx, 0, a); err != nil {
		t.Fatalf("WriteRegion: %v", err)
	}
	if err := s.disk.SyncProgress(ctx, 1<<16); err != nil {
		t.Fatalf("SyncProgress: %v", err)
	}
	if err := s.disk.WriteRegion(ctx, 1<<16, fill(1<<16, 77)); err != nil { // lost in the crash
		t.Fatalf("WriteRegion: %v", err)
	}
	s.reopen(true)
	st = mustState(t, s.disk)
	if st.Sync == nil || st.Sync.CopiedThrough != 1<<16 {
		t.Fatalf("State after a crash mid-copy = %+v, want copied through %d", st, 1<<16)
	}
	// The primary resumes from CopiedThrough.
	if err := s.disk.WriteRegion(ctx, 1<<16, b); err != nil {
		t.Fatalf("WriteRegion on resume: %v", err)
	}
	if err := s.disk.ZeroRegion(ctx, 2<<16, 2<<16); err != nil {
		t.Fatalf("ZeroRegion on resume: %v", err)
	}
	copy(m.staged, a)
	copy(m.staged[1<<16:], b)
	clear(m.staged[2<<16 : 4<<16])
	if err := s.disk.SyncProgress(ctx, 4<<16); err != nil {
		t.Fatalf("SyncProgress: %v", err)
	}
	if err := s.disk.EndCopy(ctx, c.pos); err != nil {
		t.Fatalf("EndCopy: %v", err)
	}
	if err := s.disk.CommitSync(ctx); err != nil {
		t.Fatalf("CommitSync: %v", err)
	}
	m.img = m.staged
	checkImage(t, "replica after a resumed resync", s.contents(), m.img)

	// A sync replaced by another before its commit leaves nothing behind.
	if err := s.disk.BeginSync(ctx, replication.SyncInfo{ID: 4, Base: c.pos}); err != nil {
		t.Fatalf("BeginSync: %v", err)
	}
	if err := s.disk.WriteRegion(ctx, 0, fill(4096, 200)); err != nil {
		t.Fatalf("WriteRegion: %v", err)
	}
	if err := s.disk.SyncProgress(ctx, 4096); err != nil {
		t.Fatalf("SyncProgress: %v", err)
	}
	if err := s.disk.BeginSync(ctx, replication.SyncInfo{ID: 5, Base: c.pos}); err != nil {
		t.Fatalf("BeginSync replacing a sync: %v", err)
	}
	if err := s.disk.EndCopy(ctx, c.pos); err != nil {
		t.Fatalf("EndCopy: %v", err)
	}
	if err := s.disk.CommitSync(ctx); err != nil {
		t.Fatalf("CommitSync: %v", err)
	}
	checkImage(t, "replica after a replaced sync", s.contents(), m.img)
	if st := mustState(t, s.disk); st.Consistent != c.pos.Seq || st.Sync != nil {
		t.Fatalf("State = %+v, want consistent at %d", st, c.pos.Seq)
	}
}

// TestDiskReadersSeeWholeRecords reads the replica, as NBD clients of
// NAME@latest do, while records are applied and a resync commits: each
// record fills a block with one byte value, so a torn apply would show
// as a block of two values.
func TestDiskReadersSeeWholeRecords(t *testing.T) {
	ctx := context.Background()
	s := openReplica(t, t.TempDir(), testSize)
	m := newModel()
	c := &chain{}
	fullSync(t, s, m, c)
	const block = 256 << 10
	for off := int64(0); off < testSize; off += block { // uniform blocks to start from
		r := c.write(off, bytes.Repeat([]byte{1}, block))
		if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
			t.Fatalf("AppendReceived: %v", err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, block)
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64(n%(testSize/block)) * block
				if _, err := s.disk.ReadAt(b, off); err != nil {
					t.Errorf("ReadAt: %v", err)
					return
				}
				for _, v := range b {
					if v != b[0] {
						t.Errorf("block at off=%d holds %d and %d: a torn record", off, b[0], v)
						return
					}
				}
				reads.Add(1)
			}
		}()
	}
	for i := 0; i < 60; i++ {
		off := int64(i%(testSize/block)) * block
		r := c.write(off, bytes.Repeat([]byte{byte(i + 2)}, block))
		if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
			t.Fatalf("AppendReceived: %v", err)
		}
		if i == 30 { // a resync of one whole block commits meanwhile
			c.write(0, []byte{0}) // a record lost to an overflow
			if err := s.disk.BeginSync(ctx, replication.SyncInfo{ID: 11, Base: c.pos}); err != nil {
				t.Fatalf("BeginSync: %v", err)
			}
			if err := s.disk.WriteRegion(ctx, 0, bytes.Repeat([]byte{200}, block)); err != nil {
				t.Fatalf("WriteRegion: %v", err)
			}
			if err := s.disk.SyncProgress(ctx, block); err != nil {
				t.Fatalf("SyncProgress: %v", err)
			}
			if err := s.disk.EndCopy(ctx, c.pos); err != nil {
				t.Fatalf("EndCopy: %v", err)
			}
			if err := s.disk.CommitSync(ctx); err != nil {
				t.Fatalf("CommitSync: %v", err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatalf("no reads ran alongside the records")
	}
}

func TestDiskDetach(t *testing.T) {
	ctx := context.Background()
	s := openReplica(t, t.TempDir(), testSize)
	m := newModel()
	c := &chain{}
	fullSync(t, s, m, c)
	r := c.write(4096, fill(4096, 3))
	if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
		t.Fatalf("AppendReceived: %v", err)
	}
	apply(m.img, r)
	f, err := s.disk.Detach(ctx)
	if err != nil {
		t.Fatalf("Detach: %v", err)
	}
	defer f.Close()
	checkImage(t, "detached store", readAll(t, f, testSize), m.img)
	if _, err := s.disk.State(ctx); !errors.Is(err, replica.ErrClosed) {
		t.Fatalf("State after Detach = %v, want ErrClosed", err)
	}
	if s.disk.StorePath() == "" {
		t.Fatalf("StorePath is empty")
	}
}

// TestDiskSyncBlockedByHold checks that a sync cannot start while another
// consumer holds records back, and is set up at the next Open once the
// hold is gone.
func TestDiskSyncBlockedByHold(t *testing.T) {
	ctx := context.Background()
	s := openReplica(t, t.TempDir(), testSize)
	m := newModel()
	c := &chain{}
	fullSync(t, s, m, c)
	r := c.write(0, fill(4096, 9))
	if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
		t.Fatalf("AppendReceived: %v", err)
	}
	apply(m.img, r)
	if err := s.log.SetHold("view", 0); err != nil {
		t.Fatalf("SetHold: %v", err)
	}
	c.write(8192, []byte{1})
	if err := s.disk.BeginSync(ctx, replication.SyncInfo{ID: 12, Base: c.pos}); err == nil {
		t.Fatalf("BeginSync with records held by another consumer succeeded")
	}
	if _, err := s.disk.State(ctx); !errors.Is(err, replica.ErrBroken) {
		t.Fatalf("State after a failed BeginSync = %v, want ErrBroken", err)
	}
	checkImage(t, "replica after a failed BeginSync", s.contents(), m.img)
	if err := s.log.RemoveHold("view"); err != nil {
		t.Fatalf("RemoveHold: %v", err)
	}
	s.reopen(false)
	st := mustState(t, s.disk)
	if st.Sync == nil || st.Sync.ID != 12 || st.Head != c.pos || st.Consistent != c.pos.Seq-1 {
		t.Fatalf("State after reopen = %+v, want sync 12 set up at head %+v, consistent %d", st, c.pos, c.pos.Seq-1)
	}
	checkImage(t, "replica after reopen", s.contents(), m.img)
}

// TestDiskDeferredApply: AppendDurable makes records the replica's head
// before the store shows them; Apply shows them, once; a crash in between
// replays them from the journal.
func TestDiskDeferredApply(t *testing.T) {
	ctx := context.Background()
	s, c, m := syncedReplica(t)
	before := append([]byte(nil), m.img...)

	r1, r2 := c.write(0, fill(6000, 1)), c.write(8192, fill(100, 2))
	recs := []journal.Record{r1, r2}
	if err := s.disk.AppendDurable(ctx, recs); err != nil {
		t.Fatalf("AppendDurable: %v", err)
	}
	if got := mustState(t, s.disk); got.Head != c.pos || got.Consistent != c.pos.Seq {
		t.Fatalf("State after AppendDurable = %+v, want head and consistent at %+v", got, c.pos)
	}
	checkImage(t, "NBD reads before Apply", readAll(t, s.disk, testSize), before)
	// The store lacks r1 too: Apply of r2 alone reads it back.
	if err := s.disk.Apply(ctx, []journal.Record{r2}); err != nil {
		t.Fatalf("Apply of seq=%d before seq=%d: %v", r2.Seq, r1.Seq, err)
	}
	apply(m.img, r1)
	apply(m.img, r2)
	checkImage(t, "NBD reads after Apply", readAll(t, s.disk, testSize), m.img)
	if err := s.disk.Apply(ctx, recs); err != nil {
		t.Errorf("Apply of applied records = %v, want a no-op", err)
	}
	checkImage(t, "NBD reads after a second Apply", readAll(t, s.disk, testSize), m.img)

	r3 := c.write(4096, fill(3000, 3))
	if err := s.disk.AppendDurable(ctx, []journal.Record{r3}); err != nil {
		t.Fatalf("AppendDurable: %v", err)
	}
	apply(m.img, r3)
	s.reopen(true) // a crash before Apply
	checkImage(t, "replica after a crash between append and apply", readAll(t, s.disk, testSize), m.img)
}

// TestDiskApplyBesideAppend: while Apply writes a group to the store,
// the next group's AppendDurable completes (it does not wait for the
// store), and a reader of the replica waits for one record's write at
// most: it sees the store as of the last record applied, in order.
func TestDiskApplyBesideAppend(t *testing.T) {
	ctx := context.Background()
	s, c, m := syncedReplica(t)
	g1 := []journal.Record{c.write(0, fill(4096, 1)), c.write(4096, fill(4096, 2)), c.write(8192, fill(4096, 3))}
	if err := s.disk.AppendDurable(ctx, g1); err != nil {
		t.Fatalf("AppendDurable: %v", err)
	}
	held, release := make(chan struct{}), make(chan struct{})
	writes := 0
	replica.SetFault(s.disk, func(point string) error {
		if point == replica.FaultApplyRecord {
			if writes++; writes == 2 {
				close(held) // the first record is in the store
				<-release
			}
		}
		return nil
	})
	applied := make(chan error, 1)
	go func() { applied <- s.disk.Apply(ctx, g1) }()
	<-held

	g2 := []journal.Record{c.write(12288, fill(4096, 4))}
	appended := make(chan error, 1)
	go func() { appended <- s.disk.AppendDurable(ctx, g2) }()
	select {
	case err := <-appended:
		if err != nil {
			t.Fatalf("AppendDurable beside Apply: %v", err)
		}
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("AppendDurable waited for the Apply of the group before it")
	}
	if got := mustState(t, s.disk); got.Head != c.pos {
		t.Errorf("head beside Apply = %+v, want %+v", got.Head, c.pos)
	}
	mid := append([]byte(nil), m.img...)
	apply(mid, g1[0])
	checkImage(t, "NBD reads beside Apply", readAll(t, s.disk, testSize), mid)

	close(release)
	if err := <-applied; err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := s.disk.Apply(ctx, g2); err != nil {
		t.Fatalf("Apply of the next group: %v", err)
	}
	for _, r := range append(g1, g2...) {
		apply(m.img, r)
	}
	checkImage(t, "NBD reads after both Applies", readAll(t, s.disk, testSize), m.img)
	s.reopen(false)
	checkImage(t, "replica after reopen", s.contents(), m.img)
}

// TestDiskApplyFailureBreaks: a store write that fails breaks the Disk
// at the record before it; Recover replays the journal from there.
func TestDiskApplyFailureBreaks(t *testing.T) {
	ctx := context.Background()
	s, c, m := syncedReplica(t)
	g := []journal.Record{c.write(0, fill(4096, 1)), c.write(4096, fill(4096, 2))}
	if err := s.disk.AppendDurable(ctx, g); err != nil {
		t.Fatalf("AppendDurable: %v", err)
	}
	eio := errors.New("injected EIO")
	writes := 0
	replica.SetFault(s.disk, func(point string) error {
		if point == replica.FaultApplyRecord {
			if writes++; writes == 2 {
				return eio
			}
		}
		return nil
	})
	if err := s.disk.Apply(ctx, g); !errors.Is(err, eio) {
		t.Fatalf("Apply with a failing store = %v, want %v", err, eio)
	}
	if err := replica.Broken(s.disk); !errors.Is(err, eio) {
		t.Fatalf("Broken after a failed write = %v, want it to wrap %v", err, eio)
	}
	if got := replica.Applied(s.disk); got != g[0].Seq {
		t.Errorf("applied after a failed write = %d, want %d", got, g[0].Seq)
	}
	replica.SetFault(s.disk, nil)
	if err := s.disk.Recover(ctx); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	for _, r := range g {
		apply(m.img, r)
	}
	checkImage(t, "NBD reads after Recover", readAll(t, s.disk, testSize), m.img)
}

// TestDiskBackgroundCheckpoint: a checkpoint due in Apply runs beside the
// next records rather than before them, and makes the records it covers
// releasable without a Close; a crash at any moment loses none of the
// records, whether or not a checkpoint was in flight.
func TestDiskBackgroundCheckpoint(t *testing.T) {
	ctx := context.Background()
	s := openReplica(t, t.TempDir(), testSize)
	s.opts.CheckpointBytes = 1 // every Apply finds a checkpoint due
	s.reopen(false)
	c := &chain{pos: replication.Position{Seq: 10, Sum: 0x99}}
	m := newModel()
	fullSync(t, s, m, c)
	synced := c.pos.Seq

	for round := range 3 {
		for i := range 200 {
			r := c.write(int64(i%64)*4096, fill(4096, byte(round*200+i)))
			if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
				t.Fatalf("AppendReceived seq=%d: %v", r.Seq, err)
			}
			apply(m.img, r)
		}
		// No Close: only the background checkpoints persist what the
		// store holds, and Expire releases no more than that.
		deadline := time.Now().Add(10 * time.Second)
		for {
			base, err := s.disk.Expire(ctx, time.Now())
			if err != nil {
				t.Fatalf("Expire: %v", err)
			}
			if base > synced && base <= c.pos.Seq {
				synced = base
				break
			}
			if base > c.pos.Seq || time.Now().After(deadline) {
				t.Fatalf("round %d: Expire = %d, want a background checkpoint past %d and at most %d", round, base, synced, c.pos.Seq)
			}
			// The checkpoint due after the last record starts with the next Apply.
			r := c.write(0, fill(512, byte(round)))
			if err := s.disk.AppendReceived(ctx, []journal.Record{r}); err != nil {
				t.Fatalf("AppendReceived seq=%d: %v", r.Seq, err)
			}
			apply(m.img, r)
			time.Sleep(time.Millisecond)
		}
		s.reopen(round%2 == 0) // a crash, maybe with a checkpoint in flight
		checkImage(t, fmt.Sprintf("replica after reopen %d", round), readAll(t, s.disk, testSize), m.img)
		if through, err := s.disk.CheckChain(ctx); err != nil || through != c.pos.Seq {
			t.Fatalf("CheckChain after reopen %d = %d, %v; want %d", round, through, err, c.pos.Seq)
		}
	}
}

// TestDiskExpire: the retention policy's release by time lets go of the
// records written before the cutoff, but only those the store holds
// durably (it never syncs the store itself, but starts a background
// checkpoint when expired records wait for one), and nothing during a
// sync.
func TestDiskExpire(t *testing.T) {
	ctx := context.Background()
	s, c, m := syncedReplica(t)
	synced := c.pos.Seq // the commit applied and persisted the sync's records

	old := []journal.Record{c.write(0, fill(4096, 1)), c.write(4096, fill(4096, 2))}
	if err := s.disk.AppendReceived(ctx, old); err != nil {
		t.Fatalf("AppendReceived: %v", err)
	}
	time.Sleep(2 * time.Millisecond)
	cutoff := time.Now()
	time.Sleep(2 * time.Millisecond)
	recent := c.write(8192, fill(4096, 3))
	if err := s.disk.AppendReceived(ctx, []journal.Record{recent}); err != nil {
		t.Fatalf("AppendReceived: %v", err)
	}
	for _, r := range append(old, recent) {
		apply(m.img, r)
	}
	// No checkpoint since the sync: the store holds the records after
	// it only through the journal, which keeps them.
	if base, err := s.disk.Expire(ctx, cutoff); err != nil || base != synced {
		t.Fatalf("Expire before a checkpoint = %d, %v; want %d (the sync's records only)", base, err, synced)
	}
	// That call started a checkpoint in the background, long before
	// Apply's next one is due; a later call releases what it covers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		base, err := s.disk.Expire(ctx, cutoff)
		if err != nil {
			t.Fatalf("Expire: %v", err)
		}
		if base == old[1].Seq {
			break
		}
		if base != synced || time.Now().After(deadline) {
			t.Fatalf("Expire after the checkpoint it started = %d, want %d", base, old[1].Seq)
		}
		time.Sleep(time.Millisecond)
	}
	s.reopen(false)
	if base, err := s.disk.Expire(ctx, cutoff); err != nil || base != old[1].Seq {
		t.Fatalf("Expire(cutoff) = %d, %v; want %d (the records before the cutoff)", base, err, old[1].Seq)
	}
	if base, err := s.disk.Expire(ctx, cutoff.Add(-time.Hour)); err != nil || base != old[1].Seq {
		t.Errorf("Expire of an earlier cutoff = %d, %v; want the base %d unchanged", base, err, old[1].Seq)
	}
	if base, err := s.disk.Expire(ctx, time.Now()); err != nil || base != recent.Seq {
		t.Errorf("Expire(now) = %d, %v; want %d", base, err, recent.Seq)
	}
	s.reopen(false)
	if base, _ := s.log.Base(); base != recent.Seq {
		t.Errorf("base after reopen = %d, want %d", base, recent.Seq)
	}
	checkImage(t, "replica after expiry and reopen", readAll(t, s.disk, testSize), m.img)
	if through, err := s.disk.CheckChain(ctx); err != nil || through != recent.Seq {
		t.Errorf("CheckChain after expiry = %d, %v; want %d", through, err, recent.Seq)
	}
}

// TestDiskRangesAfter: a reconcile's ranges are those of the records
// after the agreed one, which must be the replica's with the same sum;
// a rewinding resync then takes the consistent point back to it.
func TestDiskRangesAfter(t *testing.T) {
	ctx := context.Background()
	s, c, _ := syncedReplica(t)
	recs := []journal.Record{c.write(0, fill(4096, 1)), c.write(65536, fill(8192, 2)), c.write(1<<19, fill(4096, 3))}
	if err := s.disk.AppendReceived(ctx, recs); err != nil {
		t.Fatalf("AppendReceived: %v", err)
	}
	agreed := replication.Position{Seq: recs[0].Seq, Sum: recs[0].Sum}
	got, whole, err := s.disk.RangesAfter(ctx, agreed)
	want := []replication.Region{{Off: 65536, Len: 8192}, {Off: 1 << 19, Len: 4096}}
	if err != nil || whole || !slices.Equal(got, want) {
		t.Fatalf("RangesAfter(seq=%d) = %v, %v, %v; want %v", agreed.Seq, got, whole, err, want)
	}
	for _, p := range []replication.Position{
		{Seq: agreed.Seq, Sum: agreed.Sum ^ 1}, // another history
		{Seq: recs[2].Seq + 1},                 // past the head
		{Seq: 3},                               // before the replica's base
	} {
		if _, _, err := s.disk.RangesAfter(ctx, p); !errors.Is(err, replication.ErrNotAgreed) {
			t.Errorf("RangesAfter(%+v) error %v; want ErrNotAgreed", p, err)
		}
	}
	// The resync that follows rewinds the consistent point to the
	// agreed record, until it commits.
	info := replication.SyncInfo{ID: 7, Base: replication.Position{Seq: agreed.Seq + 1, Sum: 0x77}, Rewind: true, After: agreed.Seq}
	if err := s.disk.BeginSync(ctx, info); err != nil {
		t.Fatalf("BeginSync: %v", err)
	}
	if st := mustState(t, s.disk); st.Consistent != agreed.Seq || st.Head != info.Base {
		t.Errorf("state after a rewinding BeginSync: consistent %d head %+v; want %d and %+v", st.Consistent, st.Head, agreed.Seq, info.Base)
	}
}

// TestDiskFullDuringSync: a full file system refuses a staged region and
// then a sync's progress; the progress failure breaks the Disk, Recover
// brings it back at the durable CopiedThrough, and the copy resumes from
// there, as the primary resumes it, and commits.
func TestDiskFullDuringSync(t *testing.T) {
	ctx := context.Background()
	var free atomic.Int64
	free.Store(1 << 40)
	setFree := func(n int64) {
		free.Store(n)
		time.Sleep(10 * time.Millisecond) // the journal statfs's at most every 5 ms
	}
	s := &replicaSite{t: t, dir: t.TempDir(), size: testSize, free: &free}
	s.open()
	t.Cleanup(func() { s.close(false) })
	c := &chain{}
	want := make([]byte, testSize)
	if err := s.disk.BeginSync(ctx, replication.SyncInfo{ID: 5, Full: true, Base: c.pos, Total: testSize}); err != nil {
		t.Fatalf("BeginSync: %v", err)
	}
	a, b := fill(64<<10, 1), fill(64<<10, 2)
	if err := s.disk.WriteRegion(ctx, 0, a); err != nil {
		t.Fatalf("WriteRegion: %v", err)
	}
	if err := s.disk.SyncProgress(ctx, 64<<10); err != nil {
		t.Fatalf("SyncProgress: %v", err)
	}
	copy(want, a)

	setFree(100 << 10)
	if err := s.disk.WriteRegion(ctx, 64<<10, b); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("WriteRegion on a full file system = %v, want ENOSPC", err)
	}
	setFree(1 << 40)
	if err := s.disk.WriteRegion(ctx, 64<<10, b); err != nil {
		t.Fatalf("WriteRegion again once there is room: %v", err)
	}
	setFree(100 << 10)
	if err := s.disk.SyncProgress(ctx, 128<<10); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("SyncProgress on a full file system = %v, want ENOSPC", err)
	}
	if _, err := s.disk.State(ctx); !errors.Is(err, replica.ErrBroken) {
		t.Fatalf("State after a failed SyncProgress = %v, want ErrBroken", err)
	}
	setFree(1 << 40)
	if err := s.disk.Recover(ctx); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	st := mustState(t, s.disk)
	if st.Sync == nil || st.Sync.ID != 5 || st.Sync.CopiedThrough != 64<<10 {
		t.Fatalf("State after Recover = %+v, want sync 5 copied through %d", st, 64<<10)
	}
	// The primary resumes from CopiedThrough.
	if err := s.disk.WriteRegion(ctx, 64<<10, b); err != nil {
		t.Fatalf("WriteRegion on resume: %v", err)
	}
	copy(want[64<<10:], b)
	if err := s.disk.SyncProgress(ctx, testSize); err != nil {
		t.Fatalf("SyncProgress on resume: %v", err)
	}
	if err := s.disk.EndCopy(ctx, c.pos); err != nil {
		t.Fatalf("EndCopy: %v", err)
	}
	if err := s.disk.CommitSync(ctx); err != nil {
		t.Fatalf("CommitSync: %v", err)
	}
	checkImage(t, "replica after a sync through a full file system", s.contents(), want)
}
