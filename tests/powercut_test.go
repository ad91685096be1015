package tests

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/tests/crashfs"
)

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
	lower, mnt := t.TempDir(), t.TempDir()
	cfs, err := crashfs.Mount(mnt, lower)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cfs.Unmount() })

	s := newSiteAt(t, "alpha", filepath.Join(mnt, "data"))
	s.start()
	s.mustTandem("disk", "create", "vol1", "--size", "16M")
	load := newCrashLoad(blocks, 4)
	keeps := []float64{0, 0.5, 0.9}
	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		wg := load.run(ctx, t, s, round)
		time.Sleep(time.Duration(300+load.rng.IntN(700)) * time.Millisecond)
		s.kill()
		cancel()
		wg.Wait()
		keep := keeps[round%len(keeps)]
		kept, reverted, err := cfs.Cut(rand.New(rand.NewPCG(load.rng.Uint64(), 0)), keep)
		if err != nil {
			t.Fatalf("round %d: cut: %v", round, err)
		}
		t.Logf("round %d: power cut after %d writes, %d flushes: %d unsynced pages kept, %d lost (keep %.1f)",
			round, load.writes, load.flushes, kept, reverted, keep)
		if err := cfs.Unmount(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if cfs, err = crashfs.Mount(mnt, lower); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
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
	lower, mnt := t.TempDir(), t.TempDir()
	cfs, err := crashfs.Mount(mnt, lower)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cfs.Unmount() })

	sec := newSiteAt(t, "beta", filepath.Join(mnt, "data"))
	sec.start()
	pri := newSite(t, "alpha")
	pri.start()
	pri.mustTandem("pair", "add", strings.TrimSpace(sec.mustTandem("pair", "token")))
	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	// Hold writes rather than fall back to async: no write may be
	// acknowledged without the secondary.
	pri.mustTandem("protect", "vol1", "--peer", "beta", "--mode", "sync", "--peer-away", "hold", "--sync-timeout", "10m")
	waitCaughtUp(t, pri, "vol1", time.Minute)

	load := newCrashLoad(blocks, 4)
	load.ackDurable = true
	keeps := []float64{0, 0.5}
	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		wg := load.run(ctx, t, pri, round)
		time.Sleep(time.Duration(300+load.rng.IntN(700)) * time.Millisecond)
		pri.kill()
		cancel()
		wg.Wait()
		sec.kill()
		keep := keeps[round%len(keeps)]
		kept, reverted, err := cfs.Cut(rand.New(rand.NewPCG(load.rng.Uint64(), 0)), keep)
		if err != nil {
			t.Fatalf("round %d: cut: %v", round, err)
		}
		t.Logf("round %d: secondary's power cut after %d acknowledged writes: %d unsynced pages kept, %d lost (keep %.1f)",
			round, load.writes, kept, reverted, keep)
		if err := cfs.Unmount(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if cfs, err = crashfs.Mount(mnt, lower); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
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
	lower, mnt := t.TempDir(), t.TempDir()
	cfs, err := crashfs.Mount(mnt, lower)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cfs.Unmount() })

	sec := newSite(t, "beta")
	sec.start()
	pri := newSiteAt(t, "alpha", filepath.Join(mnt, "data"))
	pri.start()
	pri.mustTandem("pair", "add", strings.TrimSpace(sec.mustTandem("pair", "token")))
	pri.mustTandem("disk", "create", "vol1", "--size", "16M")
	pri.mustTandem("protect", "vol1", "--peer", "beta")
	waitCaughtUp(t, pri, "vol1", time.Minute)

	load := newCrashLoad(blocks, 4)
	keeps := []float64{0, 0.5, 0.9}
	reconciled := 0
	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		wg := load.run(ctx, t, pri, round)
		time.Sleep(time.Duration(300+load.rng.IntN(700)) * time.Millisecond)
		pri.kill()
		cancel()
		wg.Wait()
		keep := keeps[round%len(keeps)]
		kept, reverted, err := cfs.Cut(rand.New(rand.NewPCG(load.rng.Uint64(), 0)), keep)
		if err != nil {
			t.Fatalf("round %d: cut: %v", round, err)
		}
		t.Logf("round %d: primary's power cut after %d writes, %d flushes: %d unsynced pages kept, %d lost (keep %.1f)",
			round, load.writes, load.flushes, kept, reverted, keep)
		if err := cfs.Unmount(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if cfs, err = crashfs.Mount(mnt, lower); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		pri.start()
		load.check(t, pri, round)
		waitCaughtUp(t, pri, "vol1", time.Minute)
		compareReplica(t, pri, sec, "vol1")
		if strings.Contains(pri.daemon.output(), "resyncing the regions they touched") {
			reconciled++
			t.Logf("round %d: the secondary held writes the primary lost; reconciled", round)
		}
	}
	// A cut that keeps nothing loses the writes shipped since the last
	// flush: the reconcile must have run.
	if reconciled == 0 {
		t.Fatalf("no round left the secondary ahead of the primary: the test did not exercise the reconcile")
	}
}
