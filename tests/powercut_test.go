package tests

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/tests/crashfs"
)

// startPaired starts both sites and pairs the primary with the secondary.
func startPaired(pri, sec *site) {
	sec.start()
	pri.start()
	pri.mustTandem("pair", "add", strings.TrimSpace(sec.mustTandem("pair", "token")))
}

// crashDisk is a crash file system (tests/crashfs) over a directory; a
// cut remounts it in place, as the machine would boot again.
type crashDisk struct {
	t          *testing.T
	lower, mnt string
	fs         *crashfs.FS
}

func newCrashDisk(t *testing.T) *crashDisk {
	t.Helper()
	c := &crashDisk{t: t, lower: t.TempDir(), mnt: t.TempDir()}
	var err error
	if c.fs, err = crashfs.Mount(c.mnt, c.lower); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.fs.Unmount() })
	return c
}

// data is a data directory on the crash file system.
func (c *crashDisk) data() string { return filepath.Join(c.mnt, "data") }

// cut cuts the power, keeping each page written since its file's last
// fsync with probability keep, and boots. Every daemon on it must be
// dead. It returns what the cut did, for the log.
func (c *crashDisk) cut(round int, seed uint64, keep float64) string {
	c.t.Helper()
	kept, lost, err := c.fs.Cut(rand.New(rand.NewPCG(seed, 0)), keep)
	if err != nil {
		c.t.Fatalf("round %d: cut: %v", round, err)
	}
	if err := c.fs.Unmount(); err != nil {
		c.t.Fatalf("round %d: %v", round, err)
	}
	if c.fs, err = crashfs.Mount(c.mnt, c.lower); err != nil {
		c.t.Fatalf("round %d: %v", round, err)
	}
	return fmt.Sprintf("%d unsynced pages kept, %d lost (keep %.1f)", kept, lost, keep)
}

// TestPowerCut runs the daemon on a crash file system (tests/crashfs), so
// that a cut loses what a disk with a volatile write cache would: every
// page written since its file's last fsync survives or not, each on its
// own. Under the crash tests' load from several connections it kills the
// daemon, cuts the power keeping none, some or most of those pages,
// "boots" (mounts the file system again) and restarts the daemon, and
// checks every block: each write acknowledged before a FLUSH, and each FUA
// write, survived; no block is torn; the journal and the store agree.
func TestPowerCut(t *testing.T) {
	const rounds, blocks = 6, 1024 // 4 MiB of the disk
	cd := newCrashDisk(t)
	s := newSiteAt(t, "alpha", cd.data())
	s.start()
	s.mustTandem("disk", "create", "vol1", "--size", "16M")
	load := newCrashLoad(blocks, 4)
	keeps := []float64{0, 0.5, 0.9}
	for round := 0; round < rounds; round++ {
		load.runThenCrash(t, s, round, 300*time.Millisecond, 700*time.Millisecond, s.kill)
		cut := cd.cut(round, load.rng.Uint64(), keeps[round%len(keeps)])
		t.Logf("round %d: power cut after %d writes, %d flushes: %s", round, load.writes, load.flushes, cut)
		s.start()
		load.check(t, s, round)
	}
	checkCleanRestart(t, s, blocks*crashBlock)
}

// TestPowerCutSecondarySync cuts the power of the secondary of a disk
// replicated in sync mode: a write acknowledged to the client must be in
// the secondary's journal durably, so after the cut and a restart of the
// secondary alone (the primary killed first, so that nothing more
// arrives), the replica's newest point holds every acknowledged write.
// Then the primary comes back, replication resumes from what the
// secondary kept, and the two are identical.
func TestPowerCutSecondarySync(t *testing.T) {
	const rounds, blocks = 4, 1024 // 4 MiB of the disk
	cd := newCrashDisk(t)
	sec := newSiteAt(t, "beta", cd.data())
	pri := newSite(t, "alpha")
	startPaired(pri, sec)
	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	// Hold writes rather than fall back to async: no write may be
	// acknowledged without the secondary.
	pri.mustTandem("protect", "vol1", "--peer", "beta", "--mode", "sync", "--peer-away", "hold", "--sync-timeout", "10m")
	waitCaughtUp(t, pri, "vol1", time.Minute)

	load := newCrashLoad(blocks, 4)
	load.ackDurable = true
	keeps := []float64{0, 0.5}
	for round := 0; round < rounds; round++ {
		load.runThenCrash(t, pri, round, 300*time.Millisecond, 700*time.Millisecond, pri.kill)
		sec.kill()
		cut := cd.cut(round, load.rng.Uint64(), keeps[round%len(keeps)])
		t.Logf("round %d: secondary's power cut after %d acknowledged writes: %s", round, load.writes, cut)
		sec.start()
		load.checkExport(t, sec, "vol1@latest", round)
		pri.start()
		waitCaughtUp(t, pri, "vol1", time.Minute)
		compareReplica(t, pri, sec, "vol1")
		load.check(t, pri, round)
	}
}

// TestPowerCutPrimaryReplicated cuts the power of a primary whose disk
// is replicated asynchronously. The secondary may then hold records the
// primary lost (written, shipped, never flushed): the primary's journal
// restarts behind the replica's. Each round checks the primary as
// TestPowerCut does, then that replication recovers and the replica ends
// identical to the primary.
func TestPowerCutPrimaryReplicated(t *testing.T) {
	const rounds, blocks = 6, 1024 // 4 MiB of the disk
	cd := newCrashDisk(t)
	sec := newSite(t, "beta")
	pri := newSiteAt(t, "alpha", cd.data())
	startPaired(pri, sec)
	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	pri.mustTandem("protect", "vol1", "--peer", "beta")
	waitCaughtUp(t, pri, "vol1", time.Minute)

	load := newCrashLoad(blocks, 4)
	// The last 100 ms before each cut neither flush nor FUA: the writes
	// of that stretch are shipped, and a cut that keeps nothing loses
	// them at the primary.
	load.quiet = 100 * time.Millisecond
	keeps := []float64{0, 0.5, 0.9}
	reconciled := 0
	for round := 0; round < rounds; round++ {
		load.runThenCrash(t, pri, round, 300*time.Millisecond, 700*time.Millisecond, pri.kill)
		cut := cd.cut(round, load.rng.Uint64(), keeps[round%len(keeps)])
		t.Logf("round %d: primary's power cut after %d writes, %d flushes: %s", round, load.writes, load.flushes, cut)
		pri.start()
		load.check(t, pri, round)
		waitCaughtUp(t, pri, "vol1", time.Minute)
		compareReplica(t, pri, sec, "vol1")
		// The activity log kept the disk's region marked: the crash
		// resyncs it, whatever the store kept past the journal.
		if !strings.Contains(pri.daemon.output(), "unclean shutdown: regions written") {
			t.Errorf("round %d: the restarted primary did not resync its active regions", round)
		}
		if strings.Contains(pri.daemon.output(), "resyncing the regions they touched") {
			reconciled++
			t.Logf("round %d: the secondary held writes the primary lost; reconciled", round)
		}
	}
	// A cut that keeps nothing loses the writes shipped in the quiet
	// stretch: the reconcile must have run.
	if reconciled == 0 {
		t.Fatalf("no round left the secondary ahead of the primary: the test did not exercise the reconcile")
	}
}

// TestPowerCutSecondaryDuringSync cuts the secondary's power again and
// again while the initial sync of a disk full of data runs (slowed by a
// bandwidth limit, with writes going on): the staged regions, the sync's
// progress and its commit survive or are redone, and the replica ends
// identical to the primary.
func TestPowerCutSecondaryDuringSync(t *testing.T) {
	cd := newCrashDisk(t)
	sec := newSiteAt(t, "beta", cd.data())
	pri := newSite(t, "alpha")
	startPaired(pri, sec)
	pri.mustTandem("disk", "create", "vol1", "--size", "32M")
	for i := 0; i < 8; i++ {
		mustRun(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %dM 3M", 0x40+i, 4*i), pri.uri("vol1"))
	}
	pri.mustTandem("protect", "vol1", "--peer", "beta", "--bandwidth", "4M", "--compress", "none")
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	for round := 0; round < 4; round++ {
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		mustRun(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %dK 64K", 0x80+round, 1024*rng.IntN(31)), pri.uri("vol1"))
		st := pri.status("vol1")
		sec.kill()
		t.Logf("round %d: secondary's power cut at %s %.0f%%: %s", round, st.State, st.SyncPercent, cd.cut(round, rng.Uint64(), 0.5))
		sec.start()
	}
	waitCaughtUp(t, pri, "vol1", 2*time.Minute)
	compareReplica(t, pri, sec, "vol1")
	if out := pri.mustTandem("verify", "vol1"); !strings.Contains(out, "0 differ") {
		t.Fatalf("verify after the cuts:\n%s", out)
	}
}
