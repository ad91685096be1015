package replication_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replication"
	"github.com/tandem-dr/tandem/replication/replicationtest"
)

const diskSize = 16 << 20

// TestPolicyReachesSecondary: the sender's retention reaches the server's
// Policy hook at each connection, in whole seconds (rounded up), with the
// offset of the primary's clock (none here: one machine).
func TestPolicyReachesSecondary(t *testing.T) {
	src, sink, sec, _, s := startPair(t, func(c *replication.SenderConfig) { c.Retention = 90*time.Minute + 500*time.Millisecond })
	waitSynced(t, s, src, sink, 20*time.Second)
	want := []string{"vm1 1h30m1s clock ok"}
	got := sec.policiesSeen()
	for deadline := time.Now().Add(10 * time.Second); len(got) == 0 && time.Now().Before(deadline); got = sec.policiesSeen() {
		time.Sleep(10 * time.Millisecond)
	}
	if !slices.Equal(got, want) {
		t.Errorf("policies at the secondary = %q, want %q", got, want)
	}
}

func TestShipUnderConcurrentWrites(t *testing.T) {
	src, sink, _, _, s := startPair(t, nil)

	stop := make(chan struct{})
	wg := load(src, 3, stop, 0)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 20*time.Second)
	st := s.Status(context.Background())
	if st.RawBytes == 0 || st.WireBytes >= st.RawBytes {
		t.Errorf("wire %d bytes for %d raw; want compression below raw", st.WireBytes, st.RawBytes)
	}
	if got := src.Acknowledged(); got != st.HeadSeq {
		t.Errorf("source released through %d; want the head %d", got, st.HeadSeq)
	}
	if kept := src.Kept(); kept != 0 {
		t.Errorf("source keeps %d records after everything was acknowledged; want 0", kept)
	}
	if _, err := sink.CheckChain(context.Background()); err != nil {
		t.Errorf("replica journal chain: %v", err)
	}
}

func TestInitialSyncWhileWriting(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	// Data before protection: the initial sync copies it. Incompressible,
	// so that under the bandwidth limit the sync lasts long enough (about
	// 200 ms) to be seen in progress even on a loaded machine.
	rng := rand.New(rand.NewPCG(1, 2))
	for off := int64(0); off < diskSize/2; off += 1 << 20 {
		chunk := make([]byte, 1<<20)
		for i := 0; i < len(chunk); i += 8 {
			binary.LittleEndian.PutUint64(chunk[i:], rng.Uint64())
		}
		src.Write(off, chunk)
	}
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	stop := make(chan struct{})
	wg := load(src, 2, stop, 50*time.Microsecond)
	d := newDialer(sec.addr())
	s, _ := startSender(t, src, d.dial, func(c *replication.SenderConfig) { c.RegionSize = 128 << 10; c.Bandwidth = 40 << 20 })
	sawSync := false
	for i := 0; i < 2000; i++ {
		st := s.Status(context.Background())
		if st.State == replication.StateInitialSync {
			sawSync = true
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 30*time.Second)
	if !sawSync {
		t.Errorf("never saw state %s", replication.StateInitialSync)
	}
	if got := sink.Commits(); got != 1 {
		t.Errorf("sink committed %d syncs; want 1", got)
	}
}

func TestResumeAfterCuts(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	proxy := replicationtest.NewProxy(t, sec.addr())
	d := newDialer(proxy.Addr())
	s, _ := startSender(t, src, d.dial, nil)
	stop := make(chan struct{})
	wg := load(src, 2, stop, 20*time.Microsecond)
	// Cut until ten cuts have hit a live connection: on a loaded machine
	// a reconnection can outlast the pause before the next cut.
	for i := 0; i < 30 || (proxy.Cuts() < 10 && i < 300); i++ {
		time.Sleep(time.Duration(20+i%30*3) * time.Millisecond)
		proxy.Cut()
	}
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 30*time.Second)
	if proxy.Cuts() < 10 {
		t.Errorf("only %d cuts hit a live connection; want at least 10", proxy.Cuts())
	}
	if got := sink.Commits(); got != 1 {
		t.Errorf("sink committed %d syncs; want only the initial one (resume, not resync)", got)
	}
}

func TestRestartSecondary(t *testing.T) {
	src, sink, sec, d, s := startPair(t, nil)
	stop := make(chan struct{})
	wg := load(src, 2, stop, 20*time.Microsecond)
	for i := 0; i < 5; i++ {
		time.Sleep(150 * time.Millisecond)
		sec.stop()
		sink.Crash()
		time.Sleep(50 * time.Millisecond)
		sec = startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
		d.addr.Store(sec.addr())
	}
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 30*time.Second)
}

func TestRestartPrimary(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	for off := int64(0); off < diskSize; off += 1 << 20 {
		src.Write(off, []byte(strings.Repeat("x", 100000)))
	}
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	stop := make(chan struct{})
	wg := load(src, 2, stop, 20*time.Microsecond)
	var s *replication.Sender
	for i := 0; i < 6; i++ {
		// A slow link so that some restarts land in the initial sync.
		s, _ = startSender(t, src, d.dial, func(c *replication.SenderConfig) { c.Bandwidth = 30 << 20; c.RegionSize = 64 << 10 })
		time.Sleep(time.Duration(40+40*i) * time.Millisecond)
		closeSender(t, s)
	}
	s, _ = startSender(t, src, d.dial, nil)
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 30*time.Second)
}

func TestOverflowResync(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode replicationtest.Overflow
	}{
		{"drop oldest", replicationtest.DropOldest},
		{"stop journaling", replicationtest.StopJournaling},
	} {
		t.Run(tc.name, func(t *testing.T) { testOverflowResync(t, tc.mode) })
	}
}

func testOverflowResync(t *testing.T, mode replicationtest.Overflow) {
	src := replicationtest.NewMemSource(diskSize, 512<<10)
	src.SetOverflow(mode)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	s, logs := startSender(t, src, d.dial, nil)
	src.Write(0, []byte("first"))
	waitSynced(t, s, src, sink, 10*time.Second)

	// The secondary goes away; writes go on and overflow the journal.
	d.failing.Store(true)
	proxyCut(t, sec, d)
	stop := make(chan struct{})
	wg := load(src, 2, stop, 10*time.Microsecond)
	for src.Overflows() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	d.failing.Store(false)
	sawResync := false
	for i := 0; i < 200 && !sawResync; i++ {
		sawResync = s.Status(context.Background()).State == replication.StateResync
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 30*time.Second)
	if !strings.Contains(logs.String(), "resyncing dirty regions") && !sawResync {
		t.Errorf("no resync seen; sender log:\n%s", logs.String())
	}
	if got := sink.Commits(); got < 2 {
		t.Errorf("sink committed %d syncs; want the initial sync and at least one resync", got)
	}
}

// proxyCut drops the sender's current connection by restarting the
// secondary on the same sinks.
func proxyCut(t *testing.T, sec *secondary, d *dialer) {
	t.Helper()
	sec.stop()
	ns := startSecondary(t, "", sec.sinks)
	d.addr.Store(ns.addr())
}

func TestWaitAckedSyncMode(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	s, logs := startSender(t, src, d.dial, func(c *replication.SenderConfig) { c.SyncTimeout = 300 * time.Millisecond })
	src.Write(0, []byte("boot"))
	waitSynced(t, s, src, sink, 10*time.Second)
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		seq := src.Write(int64(i)*4096, []byte("sync write"))
		if err := s.WaitAcked(ctx, seq); err != nil {
			t.Fatalf("WaitAcked(%d): %v", seq, err)
		}
		st, _ := sink.State(ctx)
		if st.Head.Seq < seq {
			t.Fatalf("WaitAcked(%d) returned with the secondary's durable head at %d", seq, st.Head.Seq)
		}
	}

	// Peer away: the default policy falls back to async after SyncTimeout.
	d.failing.Store(true)
	proxyCut(t, sec, d)
	seq := src.Write(0, []byte("while away"))
	start := time.Now()
	if err := s.WaitAcked(ctx, seq); err != nil {
		t.Fatalf("WaitAcked while away: %v; want nil (fallback to async)", err)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond || waited > 3*time.Second {
		t.Errorf("WaitAcked waited %v; want about SyncTimeout (300ms)", waited)
	}
	if st := s.Status(ctx); !st.SyncDegraded {
		t.Errorf("status SyncDegraded = false after fallback; want true")
	}
	if !strings.Contains(logs.String(), "falls back to async") {
		t.Errorf("no fallback alert in the log:\n%s", logs.String())
	}
	start = time.Now()
	if err := s.WaitAcked(ctx, src.Write(4096, []byte("x"))); err != nil || time.Since(start) > 100*time.Millisecond {
		t.Errorf("WaitAcked while degraded: %v after %v; want nil at once", err, time.Since(start))
	}
	d.failing.Store(false)
	waitSynced(t, s, src, sink, 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for s.Status(ctx).SyncDegraded && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.Status(ctx).SyncDegraded {
		t.Errorf("still degraded after the secondary caught up")
	}
}

func TestWaitAckedHoldPolicy(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	d := newDialer("127.0.0.1:1")
	d.failing.Store(true)
	s, _ := startSender(t, src, d.dial, func(c *replication.SenderConfig) {
		c.SyncTimeout = 100 * time.Millisecond
		c.PeerAway = replication.HoldWrites
	})
	err := s.WaitAcked(context.Background(), src.Write(0, []byte("held")))
	if !errors.Is(err, replication.ErrSyncTimeout) {
		t.Errorf("WaitAcked with the peer away under HoldWrites = %v; want ErrSyncTimeout", err)
	}
}

// TestResyncInterrupted cuts the link and restarts the primary's sender
// again and again while a resync after overflow runs: the dirty regions
// are kept until a resync commits, so the replica still ends identical.
func TestResyncInterrupted(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 256<<10)
	src.SetOverflow(replicationtest.StopJournaling)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	proxy := replicationtest.NewProxy(t, sec.addr())
	d := newDialer(proxy.Addr())
	slow := func(c *replication.SenderConfig) { c.Bandwidth = 20 << 20; c.RegionSize = 64 << 10 }
	s, _ := startSender(t, src, d.dial, slow)
	src.Write(0, []byte("first"))
	waitSynced(t, s, src, sink, 10*time.Second)

	d.failing.Store(true)
	proxy.Cut()
	for off := int64(0); off < diskSize; off += 256 << 10 {
		src.Write(off+4096, []byte(strings.Repeat("dirty while away ", 300)))
	}
	if src.Overflows() == 0 {
		t.Fatalf("journal did not overflow")
	}
	d.failing.Store(false)
	stop := make(chan struct{})
	wg := load(src, 1, stop, 200*time.Microsecond)
	for i := 0; i < 8; i++ {
		time.Sleep(time.Duration(30+20*i) * time.Millisecond)
		if i%2 == 0 {
			proxy.Cut()
		} else {
			closeSender(t, s)
			s, _ = startSender(t, src, d.dial, slow)
		}
	}
	close(stop)
	wg.Wait()
	closeSender(t, s)
	s, _ = startSender(t, src, d.dial, nil)
	waitSynced(t, s, src, sink, 30*time.Second)
	if src.SyncCommits() < 2 {
		t.Errorf("%d syncs committed at the source; want the initial sync and a resync", src.SyncCommits())
	}
}

// syncedPair is startPair, then data written at 10 offsets stride apart
// and a wait until the replica holds them.
func syncedPair(t *testing.T, data string, stride int64) (*replicationtest.MemSource, *replicationtest.MemSink, *secondary, *dialer, *replication.Sender) {
	t.Helper()
	src, sink, sec, d, s := startPair(t, nil)
	for i := int64(0); i < 10; i++ {
		src.Write(i*stride, []byte(data))
	}
	waitSynced(t, s, src, sink, 10*time.Second)
	return src, sink, sec, d, s
}

// TestDivergenceDetected connects primaries with another history to a
// replica: shorter, and longer with other sums. Both are refused as
// diverged and nothing is shipped.
func TestDivergenceDetected(t *testing.T) {
	_, sink, sec, d, s := syncedPair(t, "history A", 4096)
	closeSender(t, s)
	want, wantSeq := sink.Snapshot()

	for _, n := range []int{5, 20} {
		other := replicationtest.NewMemSource(diskSize, 0)
		for i := 0; i < n; i++ {
			other.Write(int64(i)*4096, []byte("history B"))
		}
		// The second one claims the secondary acknowledged its record
		// at the replica's head: the secondary finds a different sum
		// there and refuses to reconcile.
		var src replication.Source = other
		if n == 20 {
			src = claimsAgreed{other, replication.Position{Seq: wantSeq, Sum: 0x5eed}}
		}
		s2, _ := startSender(t, src, d.dial, nil)
		waitLastError(t, s2, "diverged", 5*time.Second)
		if st := s2.Status(context.Background()); st.State != replication.StatePaused {
			t.Errorf("primary with %d records: state %s; want %s", n, st.State, replication.StatePaused)
		}
		if n == 20 && !strings.Contains(sec.logs.String(), "does not hold the reconcile's point") {
			t.Errorf("the secondary did not refuse the made-up reconcile:\n%s", sec.logs.String())
		}
		closeSender(t, s2)
		got, gotSeq := sink.Snapshot()
		if gotSeq != wantSeq || !bytes.Equal(got, want) {
			t.Errorf("primary with %d records: replica changed (seq %d, want %d)", n, gotSeq, wantSeq)
		}
	}
}

// claimsAgreed is a source whose agreed point is made up.
type claimsAgreed struct {
	*replicationtest.MemSource
	p replication.Position
}

func (c claimsAgreed) Agreed(context.Context) (replication.Position, bool, error) {
	return c.p, true, nil
}

// TestDamagedRecordNotShipped damages a record in the primary's journal:
// the records before it are shipped, it and those after are not, and the
// sender reports the damage.
func TestDamagedRecordNotShipped(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	src.Write(0, []byte("before the sender starts"))
	s, logs := startSender(t, src, d.dial, nil)
	waitSynced(t, s, src, sink, 10*time.Second)
	closeSender(t, s)
	var bad uint64
	for i := 0; i < 10; i++ {
		seq := src.Write(int64(i)*4096, []byte("record"))
		if i == 6 {
			bad = seq
		}
	}
	src.Tamper(bad)
	s, logs = startSender(t, src, d.dial, nil)
	waitLastError(t, s, "corrupt", 10*time.Second)
	st, _ := sink.State(context.Background())
	if st.Head.Seq != bad-1 || st.Consistent != bad-1 {
		t.Errorf("replica head %d consistent %d; want both at %d, just before the damaged record", st.Head.Seq, st.Consistent, bad-1)
	}
	waitLog(t, logs, "primary journal damaged")
}

// TestBatchDelayBatches checks that a BatchDelay gathers a trickle of small
// writes into few frames, and that without it they still all arrive.
func TestBatchDelayBatches(t *testing.T) {
	frames := map[time.Duration]uint64{}
	for _, delay := range []time.Duration{0, 50 * time.Millisecond} {
		src, sink, _, _, s := startPair(t, func(c *replication.SenderConfig) {
			c.BatchDelay = delay
			c.Compress = replication.CompressNone
			c.Heartbeat = time.Hour
		})
		src.Write(0, []byte("boot"))
		waitSynced(t, s, src, sink, 10*time.Second)
		before := s.Status(context.Background()).WireBytes
		for i := 0; i < 100; i++ {
			src.Write(int64(i)*4096, []byte("x"))
			time.Sleep(time.Millisecond)
		}
		waitSynced(t, s, src, sink, 10*time.Second)
		frames[delay] = s.Status(context.Background()).WireBytes - before
		closeSender(t, s)
	}
	// Every frame costs a 16-byte header and a 4-byte count besides the
	// 55 bytes of each record.
	if frames[50*time.Millisecond] >= frames[0] {
		t.Errorf("wire bytes with BatchDelay %d, without %d; want fewer with it (fewer frames)", frames[50*time.Millisecond], frames[0])
	}
}

// TestBatchDelayEndsAtSize checks both ends of a BatchDelay's wait: a
// lone record waits for it, and the wait ends as soon as the batch holds a
// quarter of MaxBatchBytes, or the sender closes.
func TestBatchDelayEndsAtSize(t *testing.T) {
	src, sink, _, _, s := startPair(t, func(c *replication.SenderConfig) {
		c.BatchDelay = time.Hour
		c.MaxBatchBytes = 64 << 10 // a batch of 16 KiB stops waiting
		c.Heartbeat = time.Hour
	})
	waitSynced(t, s, src, sink, 10*time.Second)

	block := bytes.Repeat([]byte{7}, 4096)
	src.Write(0, block)
	time.Sleep(300 * time.Millisecond)
	if _, seq := sink.Snapshot(); seq != 0 {
		t.Fatalf("a lone record reached the replica (seq %d) within 300 ms of an hour's BatchDelay", seq)
	}
	for i := 1; i <= 8; i++ { // 36 KiB in all
		src.Write(int64(i)*4096, block)
	}
	waitSynced(t, s, src, sink, 10*time.Second)

	src.Write(0, []byte("last"))
	start := time.Now()
	closeSender(t, s)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Close took %v while a batch waited for its BatchDelay", took)
	}
}

// TestBandwidthLimit ships 6 MiB under a 4 MiB/s limit: it takes about a
// second and a half, not the milliseconds loopback allows.
func TestBandwidthLimit(t *testing.T) {
	src, sink, _, _, s := startPair(t, func(c *replication.SenderConfig) {
		c.Bandwidth = 4 << 20
		c.Compress = replication.CompressNone
	})
	src.Write(0, []byte("boot"))
	waitSynced(t, s, src, sink, 10*time.Second)
	p := make([]byte, 1<<20)
	for i := range p {
		p[i] = byte(i % 251)
	}
	start := time.Now()
	for i := 0; i < 6; i++ {
		src.Write(int64(i)<<20, p)
	}
	waitSynced(t, s, src, sink, 20*time.Second)
	// The bucket starts full (a tenth of a second's worth, at least 256
	// KiB), so 6 MiB take at least (6 MiB - 0.4 MiB) / 4 MiB/s.
	if took := time.Since(start); took < 1300*time.Millisecond || took > 8*time.Second {
		t.Errorf("shipping 6 MiB at 4 MiB/s took %v; want about 1.5s", took)
	}
}

// TestStatusLagAndRPOAlert: with the secondary away, the lag grows with
// the age of the oldest unacknowledged record, counts what is pending,
// and raises the RPO alert past its limit; once the secondary is back it
// falls to zero and the alert clears.
func TestStatusLagAndRPOAlert(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	s, logs := startSender(t, src, d.dial, func(c *replication.SenderConfig) { c.RPOAlert = 300 * time.Millisecond })
	src.Write(0, []byte("boot"))
	waitSynced(t, s, src, sink, 10*time.Second)
	ctx := context.Background()
	if st := s.Status(ctx); st.LagSeconds != 0 || st.LagRecords != 0 || st.RPOAlert || st.Throughput <= 0 {
		t.Errorf("in sync: lag %vs %d records, alert %v, throughput %v; want no lag, no alert, some throughput",
			st.LagSeconds, st.LagRecords, st.RPOAlert, st.Throughput)
	}

	d.failing.Store(true)
	proxyCut(t, sec, d)
	for i := 0; i < 10; i++ {
		src.Write(int64(i)*4096, make([]byte, 4096))
	}
	time.Sleep(1200 * time.Millisecond)
	st := s.Status(ctx)
	if st.LagSeconds < 1 || st.LagSeconds > 10 || st.LagRecords != 10 || st.LagBytes != 10*4096 || !st.RPOAlert || st.Connected {
		t.Errorf("secondary away 1.2s: %+v; want lag over 1s, 10 records, 40960 bytes, alert, not connected", st)
	}
	waitLog(t, logs, "RPO alert: lag over limit")

	d.failing.Store(false)
	waitSynced(t, s, src, sink, 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for s.Status(ctx).RPOAlert && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if st := s.Status(ctx); st.RPOAlert || st.LagSeconds != 0 || st.LagBytes != 0 {
		t.Errorf("caught up: %+v; want the alert cleared and no lag", st)
	}
	waitLog(t, logs, "RPO alert cleared")
}

// TestInitialSyncSkipsZeroes: the initial sync sends only the non-zero
// blocks of the allocated regions.
func TestInitialSyncSkipsZeroes(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	src.Write(4096, []byte("data"))                // one 64 KiB block with data
	src.Write(8<<20, make([]byte, 1<<20))          // allocated, all zero
	src.Write(12<<20, bytes.Repeat([]byte{1}, 10)) // another block with data
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	s, _ := startSender(t, src, d.dial, func(c *replication.SenderConfig) { c.Compress = replication.CompressNone })
	waitSynced(t, s, src, sink, 10*time.Second)
	if got := s.Status(context.Background()).RawBytes; got != 2*replicationtest.BlockSize {
		t.Errorf("initial sync sent %d bytes of data; want %d (two non-zero blocks)", got, 2*replicationtest.BlockSize)
	}
}

// TestSyncResumesAfterCut cuts the link during an initial sync: the sync
// resumes where the secondary's durable copy ended instead of starting
// again.
func TestSyncResumesAfterCut(t *testing.T) {
	src := filledSource(diskSize)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	proxy := replicationtest.NewProxy(t, sec.addr())
	d := newDialer(proxy.Addr())
	s, logs := startSender(t, src, d.dial, func(c *replication.SenderConfig) {
		c.Bandwidth = 16 << 20
		c.Compress = replication.CompressNone
	})
	for i := 0; i < 3; i++ {
		time.Sleep(200 * time.Millisecond)
		proxy.Cut()
	}
	waitSynced(t, s, src, sink, 30*time.Second)
	if !strings.Contains(logs.String(), "resuming sync") {
		t.Errorf("no sync resumed; sender log:\n%s", logs.String())
	}
	if got := s.Status(context.Background()).RawBytes; got > diskSize+diskSize/2 {
		t.Errorf("sent %d bytes for a %d-byte disk across 3 cuts; want well under twice (resumed, not restarted)", got, diskSize)
	}
	if got := sink.Commits(); got != 1 {
		t.Errorf("sink committed %d syncs; want 1", got)
	}
}

// TestSyncProgressBatched: a sync makes its regions durable once per
// 64 MiB on a fast link, not after every region (each time costs the
// secondary fdatasyncs it waits for), and still every 250 ms or so on a
// slow one, so that a dropped link re-sends little.
func TestSyncProgressBatched(t *testing.T) {
	// syncOnce syncs a disk of size bytes, all written, in regions of
	// regionSize at bandwidth (0: unlimited) and returns the sink and how
	// long the sync took.
	syncOnce := func(t *testing.T, size int64, regionSize int, bandwidth int64) (*replicationtest.MemSink, time.Duration) {
		src := filledSource(size)
		sink := replicationtest.NewMemSink(size)
		sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
		d := newDialer(sec.addr())
		start := time.Now()
		s, _ := startSender(t, src, d.dial, func(c *replication.SenderConfig) {
			c.Bandwidth = bandwidth
			c.RegionSize = regionSize
			c.Compress = replication.CompressNone
		})
		waitSynced(t, s, src, sink, 60*time.Second)
		took := time.Since(start)
		t.Logf("%d SyncProgress calls in %v", sink.Progresses(), took)
		return sink, took
	}
	t.Run("fast", func(t *testing.T) {
		const size = 128 << 20
		sink, took := syncOnce(t, size, 1<<20, 0)
		// One per 64 MiB, one per 250 ms, the first region's and the
		// end's; the 128 regions would each have had one before.
		limit := size/(64<<20) + int(took/(250*time.Millisecond)) + 3
		if got := sink.Progresses(); got > limit {
			t.Errorf("%d SyncProgress calls for a %d MiB sync of 1 MiB regions in %v; want at most %d", got, size>>20, took, limit)
		}
	})
	t.Run("slow", func(t *testing.T) {
		// 16 MiB at 8 MiB/s: about 2 s, so at least 4 progress points.
		sink, _ := syncOnce(t, diskSize, 256<<10, 8<<20)
		if got := sink.Progresses(); got < 4 {
			t.Errorf("%d SyncProgress calls for a %d MiB sync at 8 MiB/s; want one every 250 ms or so", got, diskSize>>20)
		}
	})
}

// filledSource returns a source of size bytes, every MiB of it written
// with the same non-zero pattern.
func filledSource(size int64) *replicationtest.MemSource {
	src := replicationtest.NewMemSource(size, 0)
	p := make([]byte, 1<<20)
	for i := range p {
		p[i] = byte(i%253) + 1
	}
	for off := int64(0); off < size; off += 1 << 20 {
		src.Write(off, p)
	}
	return src
}

// TestReconcileAfterPrimaryLostTail: the primary ships records, then
// crashes and loses some of them (they were never flushed there), so the
// secondary holds records the primary does not. With few new writes
// after the restart the secondary's head is past the primary's; with
// many, the two have different records under the same seqs. Either way
// the sender reconciles: the secondary names the ranges its extra
// records touched, a resync from the agreed point covers them, and the
// replica ends identical to the primary.
func TestReconcileAfterPrimaryLostTail(t *testing.T) {
	for _, after := range []int{3, 40} {
		t.Run(fmt.Sprintf("%d writes after the crash", after), func(t *testing.T) {
			src, sink, _, d, s := syncedPair(t, "acknowledged", 8192)
			agreed, _ := src.Head(context.Background())

			// Records shipped and held by the secondary, never made
			// durable at the primary.
			src.HoldAcks(true)
			for i := 0; i < 20; i++ {
				src.Write(int64(100+i)*8192, []byte("shipped, then lost at the primary"))
			}
			head, _ := src.Head(context.Background())
			deadline := time.Now().Add(10 * time.Second)
			for _, seq := sink.Snapshot(); seq < head.Seq; _, seq = sink.Snapshot() {
				if time.Now().After(deadline) {
					t.Fatalf("secondary holds seq=%d, want %d", seq, head.Seq)
				}
				time.Sleep(5 * time.Millisecond)
			}
			closeSender(t, s)
			if n := src.LoseTail(agreed.Seq + 5); n != 15 {
				t.Fatalf("LoseTail lost %d records, want 15", n)
			}
			src.HoldAcks(false)
			for i := 0; i < after; i++ {
				src.Write(int64(200+i)*8192, []byte("written after the restart"))
			}

			s, logs := startSender(t, src, d.dial, nil)
			waitSynced(t, s, src, sink, 10*time.Second)
			if !strings.Contains(logs.String(), "resyncing the regions they touched") {
				t.Errorf("no reconcile logged:\n%s", logs.String())
			}
			if _, err := sink.CheckChain(context.Background()); err != nil {
				t.Errorf("replica chain after reconcile: %v", err)
			}
			// And it goes on as usual.
			src.Write(0, []byte("after the reconcile"))
			waitSynced(t, s, src, sink, 10*time.Second)
			closeSender(t, s)
		})
	}
}

// writeCounter counts the writes on a connection (the sender writes each
// frame with one).
type writeCounter struct {
	net.Conn
	n *atomic.Int64
}

func (c writeCounter) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// TestSenderWindow: while the secondary acknowledges nothing (its sink is
// busy), the sender keeps MaxInflightFrames records frames in flight and
// lets the writes meanwhile gather into larger frames, rather than
// sending one frame per trickling write; all arrive once the sink is free.
func TestSenderWindow(t *testing.T) {
	for _, window := range []int{0, 12} { // 0: the default
		t.Run(fmt.Sprintf("window=%d", window), func(t *testing.T) { testSenderWindow(t, window) })
	}
}

func testSenderWindow(t *testing.T, window int) {
	want := window
	if want == 0 {
		want = replication.MaxInflightFrames
	}
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	release := make(chan struct{})
	var busy atomic.Bool
	sink.FailAppend = func([]journal.Record) error {
		if busy.Load() {
			<-release
		}
		return nil
	}
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	var writes atomic.Int64
	dial := func(ctx context.Context) (net.Conn, error) {
		c, err := d.dial(ctx)
		if err != nil {
			return nil, err
		}
		return writeCounter{c, &writes}, nil
	}
	s, _ := startSender(t, src, dial, func(c *replication.SenderConfig) {
		c.Compress = replication.CompressNone
		c.Heartbeat = time.Hour
		c.MaxInflightFrames = window
	})
	src.Write(0, []byte("boot"))
	waitSynced(t, s, src, sink, 10*time.Second)

	busy.Store(true)
	before, start := writes.Load(), time.Now()
	for i := 0; i < 100; i++ {
		src.Write(int64(i)*4096, []byte("x"))
		time.Sleep(time.Millisecond)
	}
	sent, took := writes.Load()-before, time.Since(start)
	t.Logf("sent %d frames in %v", sent, took)
	close(release)
	waitSynced(t, s, src, sink, 10*time.Second)
	// The window's frames at once, a write each, then one more each time
	// the wait for an acknowledgement gives up.
	if limit := int64(want) + int64(took/replication.InflightWait) + 2; sent > limit || sent < int64(want) {
		t.Errorf("%d frames for 100 writes in %v while the secondary acknowledged nothing; want %d to %d", sent, took.Round(time.Millisecond), want, limit)
	}
}

// TestPausedUntilSecondaryAnswers: until a secondary has answered, the
// sender does not know what it holds, so the disk is paused, not
// protected, even with nothing written (lag 0, acknowledged head 0). Once
// it answers, the initial sync starts and its commit makes the disk
// protected.
func TestPausedUntilSecondaryAnswers(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	d.failing.Store(true)
	s, _ := startSender(t, src, d.dial, nil)
	for deadline := time.Now().Add(10 * time.Second); d.dials.Load() < 2; { // it tried, and tried again
		if time.Now().After(deadline) {
			t.Fatalf("the sender dialled %d times in 10s", d.dials.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Status(context.Background()); st.State != replication.StatePaused || st.Connected {
		t.Fatalf("secondary never reached: state %s, connected %v; want %s, not connected", st.State, st.Connected, replication.StatePaused)
	}
	select {
	case <-s.Answered():
		t.Fatal("Answered closed before any secondary answered")
	default:
	}
	d.failing.Store(false)
	select {
	case <-s.Answered():
	case <-time.After(10 * time.Second):
		t.Fatal("Answered not closed 10s after the secondary came back")
	}
	waitSynced(t, s, src, sink, 10*time.Second)
	if st, err := sink.State(context.Background()); err != nil || !st.Initialized || sink.Commits() == 0 {
		t.Fatalf("protected, but the replica never had its initial sync: state %+v (%v), %d commits", st, err, sink.Commits())
	}
}
