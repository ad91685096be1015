package replica_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
	"github.com/tandem-dr/tandem/replica"
	"github.com/tandem-dr/tandem/replication"
)

const e2eSize = 8 << 20

// minWrites is how many writes a writer phase makes at least.
const minWrites = 50

// pair is a primary and a secondary linked by a Sender and a Server over
// loopback TCP, each side restartable.
type pair struct {
	t *testing.T
	p *primarySite
	s *replicaSite

	cfg    replication.SenderConfig
	src    *replica.Source
	sender *replication.Sender

	addr      atomic.Value // string: the secondary's listener
	sink      atomic.Pointer[replica.Disk]
	srv       *replication.Server
	served    chan struct{}
	stopServe context.CancelFunc

	// tapMu is held shared by writers and exclusively while the primary
	// restarts.
	tapMu sync.RWMutex
}

func newPair(t *testing.T, jopts journal.Options, topts disk.TapOptions, cfg replication.SenderConfig) *pair {
	t.Helper()
	x := &pair{t: t, cfg: cfg}
	x.p = openPrimary(t, t.TempDir(), e2eSize, jopts, topts)
	x.s = openReplica(t, t.TempDir(), e2eSize)
	x.sink.Store(x.s.disk)
	x.startServer()
	t.Cleanup(func() {
		x.stopSender()
		x.stopServer()
	})
	return x
}

func (x *pair) startServer() {
	x.t.Helper()
	srv, err := replication.NewServer(replication.ServerConfig{
		Logger:  journaltest.Logger(),
		Timeout: 5 * time.Second,
		Lookup: func(ctx context.Context, site, name string) (replication.Sink, error) {
			if d := x.sink.Load(); d != nil && name == "d" {
				return d, nil
			}
			return nil, fmt.Errorf("disk %q: %w", name, replication.ErrUnknownDisk)
		},
	})
	if err != nil {
		x.t.Fatalf("NewServer: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		x.t.Fatalf("listen: %v", err)
	}
	x.addr.Store(ln.Addr().String())
	x.srv = srv
	x.served = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	x.stopServe = cancel
	go func() {
		defer close(x.served)
		_ = srv.Serve(ctx, ln)
	}()
}

func (x *pair) stopServer() {
	if x.srv == nil {
		return
	}
	// Serve returns before Shutdown: Serve's accept loop adds to the
	// server's WaitGroup without a lock, which races with Shutdown's Wait.
	x.stopServe()
	<-x.served
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.srv.Shutdown(ctx); err != nil {
		x.t.Errorf("server shutdown: %v", err)
	}
	x.srv = nil
}

// startSender protects the primary (once) and starts a Sender over a new
// Source.
func (x *pair) startSender() {
	x.t.Helper()
	ctx := context.Background()
	if err := replica.Protect(ctx, x.p.log); err != nil {
		x.t.Fatalf("Protect: %v", err)
	}
	src, err := replica.NewSource(x.p.tap, x.p.log, replica.SourceOptions{Logger: journaltest.Logger()})
	if err != nil {
		x.t.Fatalf("NewSource: %v", err)
	}
	cfg := x.cfg
	cfg.Disk = "d"
	cfg.Source = src
	cfg.Logger = journaltest.Logger()
	cfg.Dial = func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", x.addr.Load().(string))
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat, cfg.Timeout = 20*time.Millisecond, 5*time.Second
	}
	s, err := replication.NewSender(cfg)
	if err != nil {
		x.t.Fatalf("NewSender: %v", err)
	}
	if err := s.Open(); err != nil {
		x.t.Fatalf("Sender.Open: %v", err)
	}
	x.src, x.sender = src, s
}

func (x *pair) stopSender() {
	if x.sender == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.sender.Close(ctx); err != nil {
		x.t.Errorf("close sender: %v", err)
	}
	x.sender = nil
}

// restartSecondary stops the server, closes (or crashes) the replica and
// its journal, reopens them and serves again.
func (x *pair) restartSecondary(crash bool) {
	x.t.Helper()
	x.stopServer()
	x.sink.Store(nil)
	x.s.reopen(crash)
	x.sink.Store(x.s.disk)
	x.startServer()
}

// restartPrimary stops the sender, closes the tap and journal with writes
// held off, reopens them and starts a new Sender.
func (x *pair) restartPrimary() {
	x.t.Helper()
	x.stopSender()
	x.tapMu.Lock()
	x.p.close()
	x.p.open()
	x.tapMu.Unlock()
	x.startSender()
}

// write starts writers that write, zero and trim random ranges through
// the tap until the returned stop is called; stop returns the count, once
// it is at least minWrites.
func (x *pair) write(seed uint64, writers int) (stop func() int) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var n atomic.Int64
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, w))
			buf := make([]byte, 128<<10)
			for ctx.Err() == nil {
				length := int64(1+rng.IntN(32)) * 4096
				off := rng.Int64N(e2eSize/4096-length/4096+1) * 4096
				x.tapMu.RLock()
				var err error
				switch k := rng.IntN(20); {
				case k == 0:
					err = x.p.tap.Zero(off, length, rng.IntN(2) == 0)
				case k == 1:
					err = x.p.tap.Trim(off, length)
				default:
					b := buf[:length]
					for i := 0; i < len(b); i += 512 {
						b[i] = byte(rng.Uint32())
						b[i+1] = byte(n.Load())
					}
					_, err = x.p.tap.WriteAt(b, off)
				}
				x.tapMu.RUnlock()
				if err != nil {
					x.t.Errorf("write through tap off=%d len=%d: %v", off, length, err)
					return
				}
				n.Add(1)
				time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
			}
		}(uint64(w))
	}
	return func() int {
		x.waitFor("writes through the tap", 30*time.Second, func() bool { return n.Load() >= minWrites })
		cancel()
		wg.Wait()
		return int(n.Load())
	}
}

// prefill writes incompressible data over part of the primary before
// protection.
func (x *pair) prefill() {
	x.t.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	b := make([]byte, 128<<10)
	for off := int64(0); off < e2eSize/2; off += 256 << 10 {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if _, err := x.p.tap.WriteAt(b, off); err != nil {
			x.t.Fatalf("prefill: %v", err)
		}
	}
}

// waitFor polls cond until it holds or the timeout passes.
func (x *pair) waitFor(what string, timeout time.Duration, cond func() bool) {
	x.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			x.t.Fatalf("timed out after %v waiting for %s; sender status %+v", timeout, what, x.status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (x *pair) status() replication.Status {
	if x.sender == nil {
		return replication.Status{}
	}
	return x.sender.Status(context.Background())
}

func (x *pair) sinkState() replication.SinkState {
	d := x.sink.Load()
	if d == nil {
		return replication.SinkState{}
	}
	st, err := d.State(context.Background())
	if err != nil {
		return replication.SinkState{}
	}
	return st
}

// converge waits, with writes stopped, until the replica's consistent
// point is the primary's head with nothing left to resync, then compares
// every byte.
func (x *pair) converge(timeout time.Duration) {
	x.t.Helper()
	ctx := context.Background()
	var head replication.Position
	x.waitFor("the replica to catch up", timeout, func() bool {
		var err error
		if head, err = x.src.Head(ctx); err != nil {
			x.t.Fatalf("Head: %v", err)
		}
		st := x.sinkState()
		// The consistent point moves once records are durable in the
		// journal; the store applies them just after (Apply): compare
		// once it has.
		return st.Initialized && st.Sync == nil && st.Consistent == head.Seq && !x.src.NeedsResync() &&
			replica.Applied(x.s.disk) == head.Seq
	})
	want := x.p.contents()
	if off, diff := firstDiff(x.s.contents(), want); diff {
		x.t.Fatalf("replica at seq=%d differs from the primary at off=%d", head.Seq, off)
	}
	if off, diff := firstDiff(readAll(x.t, x.s.disk, e2eSize), want); diff {
		x.t.Fatalf("NBD reads of the replica differ from the primary at off=%d", off)
	}
	through, err := x.s.disk.CheckChain(ctx)
	if err != nil || through != head.Seq {
		x.t.Fatalf("replica CheckChain = %d, %v; want %d, nil", through, err, head.Seq)
	}
	x.waitFor("the replication hold to reach the head", timeout, func() bool {
		return x.p.log.Holds()[replica.HoldReplication] == head.Seq
	})
}

func fastConfig() replication.SenderConfig {
	return replication.SenderConfig{RegionSize: 64 << 10}
}

func TestReplicateEndToEnd(t *testing.T) {
	cfg := fastConfig()
	cfg.Bandwidth = 8 << 20 // the initial sync takes about half a second
	x := newPair(t, journaltest.Options(), disk.TapOptions{CheckpointEvery: 20 * time.Millisecond, RegionSize: 64 << 10}, cfg)
	x.prefill()
	if replica.Protected(x.p.log) {
		t.Fatalf("a new disk carries the replication hold")
	}
	stop := x.write(1, 2)
	x.startSender()
	x.waitFor("the initial sync to start", 10*time.Second, func() bool { return x.sinkState().Sync != nil })
	if st := x.status(); st.State != replication.StateInitialSync {
		t.Errorf("sender state during the initial sync = %q, want %q", st.State, replication.StateInitialSync)
	}
	x.waitFor("the initial sync to commit", 30*time.Second, func() bool { return x.sinkState().Initialized })
	time.Sleep(300 * time.Millisecond) // continuous replication under writes
	stop()
	x.converge(30 * time.Second)
	if st := x.status(); st.State != replication.StateProtected || st.LagRecords != 0 {
		t.Errorf("sender status after catching up = %+v, want protected with no lag", st)
	}

	// Acknowledged records are released once the tap has applied them.
	ctx := context.Background()
	if err := x.p.tap.Checkpoint(ctx); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if base, _ := x.p.log.Base(); base != x.p.log.Committed() {
		t.Errorf("primary journal base = %d after everything was acknowledged and applied, want %d", base, x.p.log.Committed())
	}

	// Verify compares digests of the primary and the replica.
	rep, err := x.sender.Verify(ctx, replication.VerifyOptions{RegionSize: 1 << 20})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(rep.Differ) != 0 || rep.Regions == 0 || !rep.ChainChecked || rep.ChainError != "" {
		t.Fatalf("Verify = %+v, want every region equal and the chain checked", rep)
	}

	// Unprotected, the journal keeps nothing back; protected again, the
	// replica catches up by a resync (the records it lacks are gone).
	x.stopSender()
	if err := replica.Unprotect(ctx, x.p.tap, x.p.log); err != nil {
		t.Fatalf("Unprotect: %v", err)
	}
	stop = x.write(5, 1)
	stop()
	if err := x.p.tap.Checkpoint(ctx); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if base, _ := x.p.log.Base(); base != x.p.log.Committed() {
		t.Errorf("unprotected journal base = %d after a checkpoint, want %d: nothing kept", base, x.p.log.Committed())
	}
	x.startSender()
	x.converge(30 * time.Second)
}

func TestReplicateRestarts(t *testing.T) {
	cfg := fastConfig()
	cfg.Bandwidth = 3 << 19 // the initial sync takes a second or two
	x := newPair(t, journaltest.Options(), disk.TapOptions{CheckpointEvery: 20 * time.Millisecond, RegionSize: 64 << 10}, cfg)
	x.prefill()
	stop := x.write(2, 2)
	x.startSender()

	// Mid initial sync: both sides go down cleanly, the secondary's
	// journal too.
	x.waitFor("the initial sync to copy something", 10*time.Second, func() bool {
		st := x.sinkState()
		return st.Sync != nil && st.Sync.CopiedThrough > 0
	})
	x.stopSender()
	x.restartSecondary(false)
	if st := x.sinkState(); st.Sync == nil || st.Sync.CopiedThrough == 0 || st.Initialized {
		t.Fatalf("replica state after a restart mid-sync = %+v, want the sync with its progress", st)
	}
	x.startSender()

	// Mid initial sync again: the secondary crashes.
	time.Sleep(100 * time.Millisecond)
	x.restartSecondary(true)
	x.waitFor("the initial sync to commit", 30*time.Second, func() bool { return x.sinkState().Initialized })

	// Mid stream: the secondary crashes, then the primary restarts.
	h0 := x.sinkState().Head.Seq
	x.waitFor("records to flow", 10*time.Second, func() bool { return x.sinkState().Head.Seq > h0+10 })
	x.restartSecondary(true)
	time.Sleep(100 * time.Millisecond)
	x.restartPrimary()
	time.Sleep(200 * time.Millisecond)
	stop()
	x.converge(30 * time.Second)
}

func TestReplicateOverflowResync(t *testing.T) {
	jopts := journaltest.Options()
	jopts.MaxBytes = 1 << 20
	cfg := fastConfig()
	cfg.Bandwidth = 3 << 20 // slower than the writers: the journal fills up
	// The limit counts wire bytes: the writers' patterns compress so well
	// that with zstd the link kept up in about 1 run in 5.
	cfg.Compress = replication.CompressNone
	x := newPair(t, jopts, disk.TapOptions{CheckpointEvery: 10 * time.Millisecond, RegionSize: 64 << 10}, cfg)
	x.startSender()
	x.waitFor("the initial sync to commit", 30*time.Second, func() bool { return x.sinkState().Initialized })

	stop := x.write(3, 3)
	var overflowed, resynced atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && !(overflowed.Load() && resynced.Load()) {
			if x.p.tap.Overflowed() {
				overflowed.Store(true)
			}
			if x.status().State == replication.StateResync {
				resynced.Store(true)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	<-done
	stop()
	if !overflowed.Load() || !resynced.Load() {
		t.Fatalf("overflowed=%v resynced=%v under writes faster than the link, want both", overflowed.Load(), resynced.Load())
	}
	x.converge(60 * time.Second)
	if x.p.tap.NeedsResync() {
		t.Fatalf("tap still needs a resync after the replica caught up")
	}
}

func TestReplicateCommitCrash(t *testing.T) {
	x := newPair(t, journaltest.Options(), disk.TapOptions{CheckpointEvery: 20 * time.Millisecond, RegionSize: 64 << 10}, fastConfig())
	x.prefill()
	fired := make(chan struct{})
	var once sync.Once
	replica.SetFault(x.s.disk, func(point string) error {
		if point != replica.FaultIntent {
			return nil
		}
		once.Do(func() { close(fired) })
		return errCrash
	})
	stop := x.write(4, 1)
	x.startSender()
	select {
	case <-fired:
	case <-time.After(30 * time.Second):
		t.Fatalf("the initial sync never reached its commit; sender status %+v", x.status())
	}
	x.stopServer()
	x.sink.Store(nil)
	x.s.reopen(true)
	st, err := x.s.disk.State(context.Background())
	if err != nil || st.Sync != nil || !st.Initialized {
		t.Fatalf("replica State after reopening over a commit intent = %+v, %v; want the sync committed", st, err)
	}
	x.sink.Store(x.s.disk)
	x.startServer()
	time.Sleep(200 * time.Millisecond)
	stop()
	x.converge(30 * time.Second)
}

func TestSourceHold(t *testing.T) {
	ctx := context.Background()
	p := openPrimary(t, t.TempDir(), 1<<20, journaltest.Options(), disk.TapOptions{CheckpointEvery: -1})
	if _, err := replica.NewSource(p.tap, p.log, replica.SourceOptions{}); !errors.Is(err, replica.ErrNotProtected) {
		t.Fatalf("NewSource on an unprotected disk = %v, want ErrNotProtected", err)
	}
	write := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := p.tap.WriteAt(fill(4096, byte(i)), int64(i)*4096); err != nil {
				t.Fatalf("WriteAt: %v", err)
			}
		}
		if err := p.tap.Checkpoint(ctx); err != nil {
			t.Fatalf("Checkpoint: %v", err)
		}
	}
	write(5)
	if base, _ := p.log.Base(); base != 5 {
		t.Fatalf("unprotected journal base after a checkpoint = %d, want 5 (released)", base)
	}
	if err := replica.Protect(ctx, p.log); err != nil {
		t.Fatalf("Protect: %v", err)
	}
	if got, ok := p.log.Holds()[replica.HoldReplication]; !ok || got != 5 {
		t.Fatalf("replication hold after Protect = %d, %v; want 5, true", got, ok)
	}
	src, err := replica.NewSource(p.tap, p.log, replica.SourceOptions{})
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	write(5)
	if base, _ := p.log.Base(); base != 5 {
		t.Fatalf("protected journal base = %d, want 5: unacknowledged records kept", base)
	}
	var seqs []uint64
	if err := src.ReadFrom(ctx, 6, func(r journal.Record) error { seqs = append(seqs, r.Seq); return nil }); err != nil || len(seqs) != 5 {
		t.Fatalf("ReadFrom(6) = %v, %v; want seqs 6..10", seqs, err)
	}
	if err := src.Acked(ctx, 8); err != nil {
		t.Fatalf("Acked: %v", err)
	}
	if base, _ := p.log.Base(); base != 8 {
		t.Fatalf("journal base after Acked(8) = %d, want 8", base)
	}
	err = src.ReadFrom(ctx, 7, func(journal.Record) error { return nil })
	if !errors.Is(err, replication.ErrTruncated) {
		t.Fatalf("ReadFrom of a released seq = %v, want ErrTruncated", err)
	}
	if err := replica.Unprotect(ctx, p.tap, p.log); err != nil {
		t.Fatalf("Unprotect: %v", err)
	}
	if replica.Protected(p.log) {
		t.Fatalf("replication hold still there after Unprotect")
	}
	if base, _ := p.log.Base(); base != 10 {
		t.Fatalf("journal base after Unprotect = %d, want 10 (released)", base)
	}
	if err := src.Acked(ctx, 10); !errors.Is(err, replica.ErrNotProtected) {
		t.Fatalf("Acked after Unprotect = %v, want ErrNotProtected", err)
	}
}

// TestSourceLostPlan checks that a resync plan the secondary never began
// cannot be mistaken for a committed one: the Base is a marker past every
// record the secondary may hold.
func TestSourceLostPlan(t *testing.T) {
	ctx := context.Background()
	jopts := journaltest.Options()
	jopts.MaxBytes = 256 << 10
	p := openPrimary(t, t.TempDir(), 4<<20, jopts, disk.TapOptions{CheckpointEvery: -1, RegionSize: 64 << 10})
	if err := replica.Protect(ctx, p.log); err != nil {
		t.Fatalf("Protect: %v", err)
	}
	src, err := replica.NewSource(p.tap, p.log, replica.SourceOptions{})
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	for i := 0; !p.tap.Overflowed(); i++ {
		if i > 1000 {
			t.Fatalf("the journal never overflowed")
		}
		if _, err := p.tap.WriteAt(fill(32<<10, byte(i)), int64(i%64)*(64<<10)); err != nil {
			t.Fatalf("WriteAt: %v", err)
		}
	}
	last := p.log.Committed() // the secondary may hold everything up to here
	if _, err := p.tap.WriteAt(fill(4096, 1), 3<<20); err != nil {
		t.Fatalf("WriteAt in overflow: %v", err)
	}
	if !src.NeedsResync() {
		t.Fatalf("NeedsResync = false after an unjournaled write")
	}
	if err := src.ReadFrom(ctx, last, func(journal.Record) error { return nil }); !errors.Is(err, replication.ErrTruncated) {
		t.Fatalf("ReadFrom across unjournaled writes = %v, want ErrTruncated", err)
	}
	plan, err := src.StartSync(ctx, false, last)
	if err != nil {
		t.Fatalf("StartSync: %v", err)
	}
	if plan.Base.Seq <= last {
		t.Fatalf("plan base seq=%d, want past the last record before the gap (%d)", plan.Base.Seq, last)
	}
	if !covers(plan.Regions, 3<<20, 4096) {
		t.Fatalf("plan regions %v miss the unjournaled write at %d", plan.Regions, 3<<20)
	}
	if p.tap.Overflowed() {
		t.Fatalf("tap still in overflow after StartSync")
	}
	// The plan is lost: the secondary still says `last`.
	if err := src.Acked(ctx, last); err != nil {
		t.Fatalf("Acked: %v", err)
	}
	if !src.NeedsResync() {
		t.Fatalf("NeedsResync = false after acknowledging a point before the plan's base")
	}
	if err := src.ReadFrom(ctx, last+1, func(journal.Record) error { return nil }); !errors.Is(err, replication.ErrTruncated) {
		t.Fatalf("ReadFrom(%d) before the plan's base = %v, want ErrTruncated", last+1, err)
	}
	if err := src.ReadFrom(ctx, plan.Base.Seq+1, func(journal.Record) error { return nil }); err != nil {
		t.Fatalf("ReadFrom after the plan's base = %v, want nil", err)
	}
	if err := src.Acked(ctx, plan.Base.Seq); err != nil {
		t.Fatalf("Acked(base): %v", err)
	}
	if src.NeedsResync() {
		t.Fatalf("NeedsResync = true after the plan's base was acknowledged")
	}
}

func covers(rs []replication.Region, off, n int64) bool {
	for _, r := range rs {
		if r.Off <= off && off+n <= r.End() {
			return true
		}
	}
	return false
}

// TestSourceMarkerPastLimit fills the journal with header-only records so
// that not even the sync marker fits: StartSync appends it past the limit.
func TestSourceMarkerPastLimit(t *testing.T) {
	ctx := context.Background()
	jopts := journaltest.Options()
	jopts.MaxBytes = 32 << 10
	p := openPrimary(t, t.TempDir(), 1<<20, jopts, disk.TapOptions{CheckpointEvery: -1, RegionSize: 64 << 10})
	if err := replica.Protect(ctx, p.log); err != nil {
		t.Fatalf("Protect: %v", err)
	}
	src, err := replica.NewSource(p.tap, p.log, replica.SourceOptions{})
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	for i := 0; !p.tap.Overflowed(); i++ {
		if i > 10000 {
			t.Fatalf("the journal never overflowed")
		}
		if err := p.tap.Zero(int64(i%256)*4096, 4096, false); err != nil {
			t.Fatalf("Zero: %v", err)
		}
	}
	last := p.log.Committed()
	plan, err := src.StartSync(ctx, false, 0)
	if err != nil {
		t.Fatalf("StartSync on a full journal: %v", err)
	}
	if plan.Base.Seq != last+1 {
		t.Fatalf("plan base seq=%d, want the marker at %d", plan.Base.Seq, last+1)
	}
	if p.log.Bytes() <= jopts.MaxBytes {
		t.Fatalf("journal holds %d bytes of at most %d: the marker did not need to pass the limit", p.log.Bytes(), jopts.MaxBytes)
	}
	var got journal.Record
	if err := p.log.ReadFrom(ctx, plan.Base.Seq, func(r journal.Record) error { got = r; return nil }); err != nil {
		t.Fatalf("ReadFrom: %v", err)
	}
	if got.Kind != journal.KindMarker || string(got.Data) != replica.SyncMarker {
		t.Fatalf("record at the plan's base = kind %d %q, want the sync marker", got.Kind, got.Data)
	}
	if head, err := src.Head(ctx); err != nil || head != plan.Base {
		t.Fatalf("Head = %+v, %v; want the plan's base %+v", head, err, plan.Base)
	}
}

// TestReplicateOverflowRestarts restarts both sites while the journal
// overflows and resyncs run: the dirty map outlives the primary's
// restart, the lost plans are planned again, and the replica ends equal.
func TestReplicateOverflowRestarts(t *testing.T) {
	jopts := journaltest.Options()
	jopts.MaxBytes = 1 << 20
	cfg := fastConfig()
	cfg.Bandwidth = 3 << 20
	x := newPair(t, jopts, disk.TapOptions{CheckpointEvery: 10 * time.Millisecond, RegionSize: 64 << 10}, cfg)
	x.prefill()
	x.startSender()
	x.waitFor("the initial sync to commit", 30*time.Second, func() bool { return x.sinkState().Initialized })
	stop := x.write(6, 3)
	for round := 0; round < 3; round++ {
		x.waitFor("the journal to overflow", 10*time.Second, func() bool { return x.p.tap.Overflowed() })
		x.waitFor("a resync", 10*time.Second, func() bool { return x.sinkState().Sync != nil })
		if round%2 == 0 {
			x.restartPrimary()
		} else {
			x.restartSecondary(true)
		}
	}
	stop()
	x.converge(60 * time.Second)
}
