package disk_test

import (
	"context"
	"testing"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
)

// TestActivityLog: with the activity log on, a write's 64 MiB region is
// durably marked active before the store write; a checkpoint after a
// Flush (or the secondary's acknowledgement, the named hold) makes it
// inactive; and a tap opened over a log left with active regions (a
// crash) turns them into dirty regions for the next resync.
func TestActivityLog(t *testing.T) {
	ctx := context.Background()
	const region = 64 << 20
	e := newTapEnv(t, 3*region, journal.Options{})
	opts := disk.TapOptions{CheckpointEvery: -1}
	tap := newTap(t, e.file, e.log, opts)
	if _, err := tap.WriteAt([]byte("before"), 0); err != nil {
		t.Fatal(err)
	}
	if got := tap.ActiveRegions(); len(got) != 0 {
		t.Fatalf("active regions with the log off: %v", got)
	}
	tap.EnableActivityLog("replication")
	if _, err := tap.WriteAt([]byte("one"), 10); err != nil {
		t.Fatal(err)
	}
	if _, err := tap.WriteAt([]byte("spans two regions"), 2*region-5); err != nil {
		t.Fatal(err)
	}
	want := []disk.Region{{Off: 0, Len: region}, {Off: region, Len: region}, {Off: 2 * region, Len: region}}
	if got := tap.ActiveRegions(); !equalRegions(got, want) {
		t.Fatalf("active regions = %v, want %v", got, want)
	}
	if _, err := e.log.Meta("tap.active"); err != nil {
		t.Fatalf("active regions not saved: %v", err)
	}

	// With room for one safe region: the secondary acknowledged the
	// first write only, so its region goes; the others wait for a Flush
	// to make their writes durable, and then the older goes.
	disk.SetActivityBudget(tap, 1)
	if err := e.log.SetHold("replication", 2); err != nil {
		t.Fatal(err)
	}
	if err := disk.SettleActivity(tap); err != nil {
		t.Fatal(err)
	}
	if got := tap.ActiveRegions(); !equalRegions(got, want[1:]) {
		t.Fatalf("active regions after the ack of seq 2 = %v, want %v", got, want[1:])
	}
	if err := tap.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := disk.SettleActivity(tap); err != nil {
		t.Fatal(err)
	}
	if got := tap.ActiveRegions(); len(got) != 1 {
		t.Fatalf("active regions after a Flush = %v, want the budget of 1", got)
	}

	// A write, then a "crash": a new tap over the log the first left.
	if _, err := tap.WriteAt([]byte("lost?"), region+100); err != nil {
		t.Fatal(err)
	}
	tap2 := newTap(t, e.file, e.log, opts)
	regs, _ := tap2.DirtyRegions()
	if !tap2.NeedsResync() || len(regs) == 0 || regs[0].Off > region || regs[len(regs)-1].Off+regs[len(regs)-1].Len < 2*region {
		t.Fatalf("after a crash: NeedsResync %v, dirty %v; want the active region [64 MiB, 128 MiB) dirty", tap2.NeedsResync(), regs)
	}
	if _, err := e.log.Meta("tap.active"); err == nil {
		t.Errorf("active regions still saved after they became dirty")
	}
}

func equalRegions(a, b []disk.Region) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestActivityLogCleanClose: a clean Close makes the journal durable and
// leaves no region active, so a restart resyncs nothing.
func TestActivityLogCleanClose(t *testing.T) {
	ctx := context.Background()
	e := newTapEnv(t, 1<<20, journal.Options{})
	tap := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1})
	tap.EnableActivityLog("replication")
	if _, err := tap.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := tap.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.log.Meta("tap.active"); err == nil {
		t.Errorf("active regions saved after a clean Close")
	}
	if tap2 := newTap(t, e.file, e.log, disk.TapOptions{CheckpointEvery: -1}); tap2.NeedsResync() {
		t.Errorf("a restart after a clean Close needs a resync")
	}
}
