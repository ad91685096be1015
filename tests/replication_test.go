package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/nbd"
)

// orderBlock is the unit of the ordered writer: step s writes block
// s%orderBlocks with a header of (generation, step).
const (
	orderBlock  = 4096
	orderBlocks = 1024
)

func orderPattern(step uint64) []byte {
	p := make([]byte, orderBlock)
	binary.LittleEndian.PutUint64(p[0:], step/orderBlocks)
	binary.LittleEndian.PutUint64(p[8:], step)
	for i := 16; i < orderBlock; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], step*0x9e3779b97f4a7c15+uint64(i))
	}
	return p
}

// orderedWriter writes steps one after another through NBD, each
// acknowledged before the next, so the primary's journal holds them in
// step order. It survives a restarted primary by dialling again and
// writing the same step again.
type orderedWriter struct {
	t     *testing.T
	sock  string
	steps atomic.Uint64 // acknowledged steps
	pause atomic.Bool
	stop  context.CancelFunc
	done  chan struct{}
}

func startOrderedWriter(t *testing.T, s *site, export string) *orderedWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &orderedWriter{t: t, sock: s.nbd, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var c *nbd.Client
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		for ctx.Err() == nil {
			if w.pause.Load() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if c == nil {
				var err error
				c, err = nbd.Dial(ctx, "unix", w.sock, export, nbd.ClientOptions{})
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
			}
			step := w.steps.Load()
			if _, err := c.WriteAt(orderPattern(step), int64(step%orderBlocks)*orderBlock); err != nil {
				c.Close()
				c = nil
				continue
			}
			w.steps.Add(1)
			if step%64 == 63 {
				c.Flush(ctx)
			}
		}
	}()
	t.Cleanup(w.finish)
	return w
}

// finish stops the writer and waits for it.
func (w *orderedWriter) finish() {
	w.stop()
	<-w.done
}

// checkOrder reads an export from the last block to the first and checks
// that it shows a prefix of the writes: a block never holds a later
// generation than the block written just before it. Reading downwards
// makes this hold even though the reads are not one atomic snapshot.
func checkOrder(t *testing.T, network, addr, export string) (maxStep uint64, err error) {
	c, err := nbd.Dial(context.Background(), network, addr, export, nbd.ClientOptions{})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, orderBlock)
	prevGen := uint64(0)
	prevSet := false
	for j := orderBlocks - 1; j >= 0; j-- {
		if _, err := c.ReadAt(buf, int64(j)*orderBlock); err != nil {
			return 0, err
		}
		gen := binary.LittleEndian.Uint64(buf[0:])
		step := binary.LittleEndian.Uint64(buf[8:])
		written := step != 0 || gen != 0 || buf[16] != 0
		if !written {
			if prevSet {
				return 0, fmt.Errorf("%s: block %d never written but block %d (written after it) is", export, j, j+1)
			}
			continue
		}
		if step%orderBlocks != uint64(j) || string(buf) != string(orderPattern(step)) {
			return 0, fmt.Errorf("%s: block %d holds a damaged or foreign pattern (step %d)", export, j, step)
		}
		if prevSet && gen < prevGen {
			return 0, fmt.Errorf("%s: block %d at generation %d but block %d (written after it) at %d: a later write shows without an earlier one", export, j, gen, j+1, prevGen)
		}
		prevGen, prevSet = gen, true
		maxStep = max(maxStep, step)
	}
	return maxStep, nil
}

// diskStatus is the part of `tandem status --json` the tests read.
type diskStatus struct {
	Name        string            `json:"name"`
	State       string            `json:"state"`
	SyncPercent float64           `json:"sync_percent"`
	LagSeconds  float64           `json:"lag_seconds"`
	LagBytes    int64             `json:"lag_bytes"`
	NewestPoint uint64            `json:"newest_point"`
	OldestPoint uint64            `json:"oldest_point"`
	AckedPoint  uint64            `json:"acked_point"`
	Connected   bool              `json:"connected"`
	RawBytes    uint64            `json:"raw_bytes"`
	WireBytes   uint64            `json:"wire_bytes"`
	Checkpoint  *checkpointStatus `json:"checkpoint"`
}

// checkpointStatus is a disk status's newest checkpoint.
type checkpointStatus struct {
	Seq   uint64 `json:"seq"`
	Label string `json:"label"`
}

func (c *checkpointStatus) String() string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("seq %d %q", c.Seq, c.Label)
}

// statusAll is `tandem status --json` of every disk, by name.
func (s *site) statusAll() map[string]diskStatus {
	s.t.Helper()
	var st []diskStatus
	if err := json.Unmarshal([]byte(s.mustTandem("status", "--json")), &st); err != nil {
		s.t.Fatalf("status: %v", err)
	}
	m := map[string]diskStatus{}
	for _, d := range st {
		m[d.Name] = d
	}
	return m
}

func (s *site) status(name string) diskStatus {
	s.t.Helper()
	var st []diskStatus
	if err := json.Unmarshal([]byte(s.mustTandem("status", name, "--json")), &st); err != nil || len(st) != 1 {
		s.t.Fatalf("status %s: %v %v", name, err, st)
	}
	return st[0]
}

// waitCaughtUp waits until the secondary holds every record of the disk.
func waitCaughtUp(t *testing.T, primary *site, name string, timeout time.Duration) diskStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var st diskStatus
	for time.Now().Before(deadline) {
		st = primary.status(name)
		if st.State == "protected" && st.Connected && st.AckedPoint >= st.NewestPoint && st.LagBytes == 0 {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not caught up after %v: %+v", name, timeout, st)
	return st
}

// pairedSites starts a primary and a secondary and pairs them; with a
// proxy the primary reaches the secondary through it.
func pairedSites(t *testing.T, viaProxy bool, primaryExtra ...string) (*site, *site, *linkProxy) {
	t.Helper()
	sec := newSite(t, "beta")
	sec.start()
	pri := newSite(t, "alpha", primaryExtra...)
	pri.start()
	var proxy *linkProxy
	args := []string{"pair", "token"}
	if viaProxy {
		proxy = newLinkProxy(t, fmt.Sprintf("127.0.0.1:%d", sec.repl))
		args = append(args, "--address", proxy.addr())
	}
	token := strings.TrimSpace(sec.mustTandem(args...))
	pri.mustTandem("pair", "add", token)
	return pri, sec, proxy
}

// compareReplica checks that the replica's newest point equals the primary.
func compareReplica(t *testing.T, pri, sec *site, name string) {
	t.Helper()
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", pri.uri(name), sec.uri(name+"@latest"))
}

// TestReplicationUnderLoad: protect a disk while a writer runs; the
// replica never shows a later write without the earlier ones; at quiesce
// it is identical and verify agrees.
func TestReplicationUnderLoad(t *testing.T) {
	pri, sec, _ := pairedSites(t, false)
	pri.mustTandem("disk", "create", "vol1", "--size", "64M")
	// Data before protection: the initial sync must carry it.
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 16M 8M", "-c", "write -P 0x7e 40M 1M", pri.uri("vol1"))
	w := startOrderedWriter(t, pri, "vol1")
	time.Sleep(300 * time.Millisecond)
	if out := pri.mustTandem("protect", "vol1", "--peer", "beta"); !strings.Contains(out, ": initial-sync") {
		t.Fatalf("protect with the secondary up printed %q; want the initial sync under way", out)
	}

	deadline := time.Now().Add(4 * time.Second)
	checks := 0
	for time.Now().Before(deadline) {
		if _, err := checkOrder(t, "unix", sec.nbd, "vol1@latest"); err != nil {
			if strings.Contains(err.Error(), "unknown export") || strings.Contains(err.Error(), "refused") {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			t.Fatal(err)
		}
		checks++
	}
	w.finish()
	waitCaughtUp(t, pri, "vol1", time.Minute)
	compareReplica(t, pri, sec, "vol1")
	if _, err := checkOrder(t, "unix", sec.nbd, "vol1@latest"); err != nil {
		t.Fatal(err)
	}
	out := pri.mustTandem("verify", "vol1")
	if !strings.Contains(out, "0 differ") {
		t.Fatalf("verify: %s", out)
	}
	st := pri.status("vol1")
	t.Logf("%d order checks; %d steps; raw %d bytes, wire %d bytes", checks, w.steps.Load(), st.RawBytes, st.WireBytes)
	if checks < 3 {
		t.Fatalf("only %d order checks ran", checks)
	}
	// The secondary refuses writes to the replica.
	r := runCmd(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", sec.uri("vol1"))
	if r.Code == 0 && !strings.Contains(r.Stdout+r.Stderr, "failed") {
		t.Fatalf("a write to the replica succeeded: %s", r.Stdout)
	}
}

// TestReplicationFaults: the link is cut many times, garbled once, the
// secondary and the primary are each killed with SIGKILL and restarted,
// all under load; the order holds throughout and the replica ends
// identical.
func TestReplicationFaults(t *testing.T) {
	pri, sec, proxy := pairedSites(t, true)
	pri.mustTandem("disk", "create", "vol1", "--size", "32M")
	w := startOrderedWriter(t, pri, "vol1")
	pri.mustTandem("protect", "vol1", "--peer", "beta")
	rng := rand.New(rand.NewPCG(3, uint64(time.Now().UnixNano())))

	check := func(phase string) {
		t.Helper()
		if _, err := checkOrder(t, "unix", sec.nbd, "vol1@latest"); err != nil && !strings.Contains(err.Error(), "unknown export") {
			t.Fatalf("%s: %v", phase, err)
		}
	}
	// Cut the link at random moments.
	for i := 0; i < 15; i++ {
		time.Sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
		proxy.cut()
		check(fmt.Sprintf("cut %d", i))
	}
	// Garble a byte in flight: TLS refuses the record, the link is
	// dropped, nothing garbled is applied, replication resumes.
	proxy.garble.Store(true)
	time.Sleep(500 * time.Millisecond)
	check("garble")
	w.pause.Store(true)
	waitCaughtUp(t, pri, "vol1", time.Minute)
	w.pause.Store(false)

	// Kill the secondary mid-stream.
	sec.kill()
	time.Sleep(300 * time.Millisecond)
	sec.start()
	check("secondary restarted")
	// Kill the primary mid-stream; the writer reconnects.
	time.Sleep(300 * time.Millisecond)
	pri.kill()
	time.Sleep(100 * time.Millisecond)
	pri.start()
	time.Sleep(500 * time.Millisecond)
	check("primary restarted")

	w.finish()
	st := waitCaughtUp(t, pri, "vol1", 2*time.Minute)
	compareReplica(t, pri, sec, "vol1")
	if _, err := checkOrder(t, "unix", sec.nbd, "vol1@latest"); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d steps, %d cuts, final point %d", w.steps.Load(), proxy.cuts.Load(), st.NewestPoint)
}

// TestReplicationOverflowResync: with the link down, a small journal
// limit overflows; the primary keeps taking writes (tracking dirty
// regions), and once the link is back it resyncs them and ends identical.
func TestReplicationOverflowResync(t *testing.T) {
	pri, sec, proxy := pairedSites(t, true, "--journal-max", "4M")
	pri.mustTandem("disk", "create", "vol1", "--size", "64M")
	pri.mustTandem("protect", "vol1", "--peer", "beta")
	waitCaughtUp(t, pri, "vol1", time.Minute)

	proxy.setDown(true)
	// A write that the store checkpoints while the link is down: the
	// replication hold is then behind the store's, as when a link fails
	// with records unshipped, and the overflow below begins with records
	// that no checkpoint covers. The write is a quarter of the journal's
	// limit, which starts a checkpoint at once.
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x41 0 1M", "-c", "flush", pri.uri("vol1"))
	time.Sleep(2 * time.Second)
	src := filepath.Join(t.TempDir(), "src.img")
	mustRun(t, "sh", "-c", "head -c 24M /dev/urandom > "+src)
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x42 0 40M", "-c", "flush", pri.uri("vol1"))
	mustRun(t, "nbdcopy", "--flush", src, pri.uri("vol1"))
	var di struct {
		Overflowed bool `json:"overflowed"`
		State      string
	}
	json.Unmarshal([]byte(pri.mustTandem("disk", "info", "vol1", "--json")), &di)
	if !di.Overflowed && di.State != "resync" {
		t.Fatalf("64 MiB written over a 4 MiB journal with the link down: disk %+v, want overflow", di)
	}
	// The replica still shows its last consistent point meanwhile.
	if _, err := checkOrder(t, "unix", sec.nbd, "vol1@latest"); err != nil {
		t.Fatal(err)
	}
	// A crash in overflow: the restarted primary replays its journal, and
	// none of those older records may overwrite the newer, unjournaled
	// (but flushed) writes.
	pri.kill()
	pri.start()
	want := make([]byte, 64<<20)
	srcData, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	copy(want, srcData)
	for i := len(srcData); i < 40<<20; i++ {
		want[i] = 0x42
	}
	got := filepath.Join(t.TempDir(), "got.img")
	mustRun(t, "nbdcopy", pri.uri("vol1"), got)
	if b, err := os.ReadFile(got); err != nil {
		t.Fatal(err)
	} else if !bytes.Equal(b, want) {
		off := 0
		for off < len(b) && off < len(want) && b[off] == want[off] {
			off++
		}
		t.Fatalf("primary after kill -9 in overflow differs from what was written and flushed, from off=%d", off)
	}
	proxy.setDown(false)
	waitCaughtUp(t, pri, "vol1", 2*time.Minute)
	compareReplica(t, pri, sec, "vol1")
}

// TestReplicationRefusals: a replayed pairing token and a connection
// without a paired certificate are refused with a clear message, and a
// protect to an unpaired site is refused.
func TestReplicationRefusals(t *testing.T) {
	sec := newSite(t, "beta")
	sec.start()
	pri := newSite(t, "alpha")
	pri.start()
	token := strings.TrimSpace(sec.mustTandem("pair", "token"))
	pri.mustTandem("pair", "add", token)
	pri.wantFail(1, "already used", "pair", "add", token)
	pri.wantFail(1, "malformed", "pair", "add", "tandem1.AAAA")

	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	pri.wantFail(1, "not paired", "protect", "vol1", "--peer", "gamma")
	pri.wantFail(2, "mode", "protect", "vol1", "--peer", "beta", "--mode", "eventually")

	// A third site that never paired cannot get in.
	other := newSite(t, "gamma")
	certDir := filepath.Join(other.data, "pki")
	runCmd(t, 30*time.Second, "sh", "-c", fmt.Sprintf(
		"echo | openssl s_client -connect 127.0.0.1:%d -cert %s/cert.pem -key %s/key.pem -alpn tandem-repl/1 -tls1_3 2>&1; true",
		sec.repl, certDir, certDir))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(sec.daemon.output(), "gamma") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(sec.daemon.output(), "not paired") {
		t.Fatalf("the secondary did not log the refusal of an unpaired site:\n%s", sec.daemon.output())
	}
	if _, err := os.Stat(filepath.Join(sec.data, "disks", "vol1.json")); err == nil {
		t.Fatalf("a replica was created for an unpaired site")
	}
	// The paired primary still replicates.
	pri.mustTandem("protect", "vol1", "--peer", "beta")
	waitCaughtUp(t, pri, "vol1", time.Minute)
}

// TestReplicationSyncMode: in sync mode a write is acknowledged only once
// the secondary holds it, so the replica has it the moment the client
// sees the acknowledgement; with the secondary away, writes fall back to
// async after the timeout (with an alert) and catch up later.
func TestReplicationSyncMode(t *testing.T) {
	pri, sec, _ := pairedSites(t, false)
	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	pri.mustTandem("protect", "vol1", "--peer", "beta", "--mode", "sync", "--sync-timeout", "500ms")
	waitCaughtUp(t, pri, "vol1", time.Minute)
	for i := 0; i < 5; i++ {
		pattern := fmt.Sprintf("0x%02x", 0x10+i)
		off := fmt.Sprintf("%dM", i)
		mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P "+pattern+" "+off+" 1M", pri.uri("vol1"))
		// No waiting: the acknowledgement means the secondary holds it.
		st := pri.status("vol1")
		if st.AckedPoint < st.NewestPoint {
			t.Fatalf("sync mode: write acknowledged while the secondary holds %d of %d", st.AckedPoint, st.NewestPoint)
		}
	}
	sec.kill()
	start := time.Now()
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 8M 1M", pri.uri("vol1"))
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("a write with the secondary away took %v", d)
	}
	out := pri.mustTandem("status", "vol1")
	if !strings.Contains(out, "SYNC DEGRADED") {
		t.Fatalf("status with the secondary away in sync mode:\n%s\nwant SYNC DEGRADED", out)
	}
	sec.start()
	waitCaughtUp(t, pri, "vol1", time.Minute)
	compareReplica(t, pri, sec, "vol1")
}

// TestReplicationSyncHold: in sync mode with --peer-away hold, a write
// while the secondary is away waits for it up to --sync-timeout, then
// completes (it is journaled; writes are never failed for a peer away);
// once the secondary is back, replication catches up and sync mode
// acknowledges at once again.
func TestReplicationSyncHold(t *testing.T) {
	pri, sec, _ := pairedSites(t, false)
	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	pri.mustTandem("protect", "vol1", "--peer", "beta", "--mode", "sync", "--peer-away", "hold", "--sync-timeout", "2s")
	waitCaughtUp(t, pri, "vol1", time.Minute)
	sec.kill()
	start := time.Now()
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5e 0 1M", pri.uri("vol1"))
	if d := time.Since(start); d < 2*time.Second || d > 15*time.Second {
		t.Fatalf("a write with the secondary away took %v; want it held for the 2s sync timeout", d)
	}
	if out := pri.mustTandem("status", "vol1"); strings.Contains(out, "SYNC DEGRADED") {
		t.Fatalf("hold mode fell back to async:\n%s", out)
	}
	sec.start()
	waitCaughtUp(t, pri, "vol1", time.Minute)
	start = time.Now()
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x6f 1M 1M", pri.uri("vol1"))
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a write with the secondary back took %v", d)
	}
	if st := pri.status("vol1"); st.AckedPoint < st.NewestPoint {
		t.Fatalf("sync mode: write acknowledged while the secondary holds %d of %d", st.AckedPoint, st.NewestPoint)
	}
	compareReplica(t, pri, sec, "vol1")
}

// TestReplicationRetention: the primary's --retention reaches the
// secondary (the policy frame), which then releases from the replica's
// retention journal the records older than it, once its store holds them
// durably; the replica stays identical to the primary.
func TestReplicationRetention(t *testing.T) {
	pri, sec, _ := pairedSites(t, false)
	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	pri.mustTandem("protect", "vol1", "--peer", "beta", "--retention", "1s")
	waitCaughtUp(t, pri, "vol1", time.Minute)
	if out := sec.mustTandem("disk", "info", "vol1"); !strings.Contains(out, "1s (the primary's policy)") {
		t.Fatalf("replica's disk info:\n%s\nwant the primary's retention, 1s", out)
	}
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4M", pri.uri("vol1"))
	waitCaughtUp(t, pri, "vol1", time.Minute)
	first := sec.status("vol1")
	// The replica checkpoints its store every few seconds of appends; the
	// retention then releases what is older than a second.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		mustRun(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %dM 1M", 0x20+i%64, 4+i%8), pri.uri("vol1"))
		st := sec.status("vol1")
		if st.OldestPoint > first.NewestPoint {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica keeps records older than its 1s retention: oldest point %d, the first writes ended at %d (%+v)", st.OldestPoint, first.NewestPoint, st)
		}
		time.Sleep(300 * time.Millisecond)
	}
	waitCaughtUp(t, pri, "vol1", time.Minute)
	compareReplica(t, pri, sec, "vol1")

	// The secondary keeps the policy across a restart, before the primary
	// is back to send it again.
	pri.stop()
	sec.kill()
	sec.start()
	if out := sec.mustTandem("disk", "info", "vol1"); !strings.Contains(out, "1s (the primary's policy)") {
		t.Fatalf("replica's disk info after a restart of the secondary:\n%s\nwant the retention kept, 1s", out)
	}
}

// TestReplicationCheckpoints: --checkpoint-every cuts automatic
// checkpoints (marker records) on a protected primary, the disks of one
// --group together under one label, and the secondary receives them with
// the records; a disk with the default interval (an hour) has none yet.
func TestReplicationCheckpoints(t *testing.T) {
	pri, sec, _ := pairedSites(t, false)
	for _, name := range []string{"vol1", "vol2", "vol3"} {
		pri.mustTandem("disk", "create", name, "--size", "16M")
	}
	for _, name := range []string{"vol1", "vol2"} {
		pri.mustTandem("protect", name, "--peer", "beta", "--group", "g1", "--checkpoint-every", "1s")
	}
	pri.mustTandem("protect", "vol3", "--peer", "beta")
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x31 0 1M", pri.uri("vol1"))

	// Both disks of the group carry the same cut, and new cuts follow.
	labels := map[string]bool{}
	var first uint64
	deadline := time.Now().Add(30 * time.Second)
	for len(labels) < 3 && time.Now().Before(deadline) {
		st := pri.statusAll()
		c1, c2 := st["vol1"].Checkpoint, st["vol2"].Checkpoint
		if c1 != nil && c2 != nil && c1.Label == c2.Label {
			if !strings.HasPrefix(c1.Label, "auto ") {
				t.Fatalf("automatic checkpoint labelled %q; want \"auto TIME\"", c1.Label)
			}
			if first == 0 {
				first = c1.Seq
			}
			labels[c1.Label] = true
		}
		if c := st["vol3"].Checkpoint; c != nil {
			t.Fatalf("vol3 (checkpoint every hour) has checkpoint %s within a minute", c)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(labels) < 3 {
		t.Fatalf("group g1 showed %d distinct shared checkpoints in 30s; want 3 (one a second)", len(labels))
	}

	// The markers travel: the replicas hold checkpoints of the same cuts.
	waitCaughtUp(t, pri, "vol1", time.Minute)
	waitCaughtUp(t, pri, "vol2", time.Minute)
	deadline = time.Now().Add(30 * time.Second)
	for {
		st := sec.statusAll()
		c1, c2 := st["vol1"].Checkpoint, st["vol2"].Checkpoint
		if c1 != nil && c2 != nil && c1.Seq >= first && c1.Label == c2.Label && strings.HasPrefix(c1.Label, "auto ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the secondary's replicas show checkpoints %s and %s; want the same cut, at or after seq %d", c1, c2, first)
		}
		time.Sleep(200 * time.Millisecond)
	}
	compareReplica(t, pri, sec, "vol1")
}

// TestProtectSecondaryAway: a disk protected while its secondary is down
// is paused, with the reason in status, not protected (nothing says what
// the replica holds); once the secondary is back the initial sync runs and
// the disk ends protected and identical.
func TestProtectSecondaryAway(t *testing.T) {
	pri, sec, _ := pairedSites(t, false)
	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 2M", pri.uri("vol1"))
	sec.kill()
	if out := pri.mustTandem("protect", "vol1", "--peer", "beta"); !strings.Contains(out, ": paused") {
		t.Fatalf("protect with the secondary away printed %q; want paused", out)
	}
	if out := pri.mustTandem("status", "vol1"); !strings.Contains(out, "paused") || !strings.Contains(out, "dial") {
		t.Fatalf("status with the secondary away:\n%s\nwant paused and the dial error", out)
	}
	sec.start()
	waitCaughtUp(t, pri, "vol1", time.Minute)
	compareReplica(t, pri, sec, "vol1")

	// A primary restarted while its secondary is away does not know what
	// the replica holds either, until the secondary answers.
	sec.kill()
	pri.kill()
	pri.start()
	if out := pri.mustTandem("status", "vol1"); !strings.Contains(out, "paused") {
		t.Fatalf("status of a restarted primary with the secondary away:\n%s\nwant paused", out)
	}
	sec.start()
	waitCaughtUp(t, pri, "vol1", time.Minute)
	compareReplica(t, pri, sec, "vol1")
}
