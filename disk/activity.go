package disk

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/tandem-dr/tandem/journal"
)

// The activity log of a replicated disk.
//
// A journaled write reaches the store's page cache once its record is
// committed, and the kernel may write the store's page to the device
// before the journal's: a power cut can leave the store holding a write
// whose record is lost. The disk alone is fine with that (the write was
// never flushed), but the secondary never receives the write, so the
// replica would differ from the primary in that block for good.
//
// As DRBD's activity log does, the tap therefore keeps, durably, the
// regions that may hold such writes: before the first store write into a
// region that is not active, it marks the region active and syncs the
// journal's metadata (not its segments). A region may go inactive once
// every write in it is in a record that is durable in the journal (a
// Flush or FUA synced it) or acknowledged by the secondary (the hold named
// when the activity log was enabled); at each checkpoint the least
// recently written of those go, down to a budget of 64 regions. That
// change is saved without a sync, since a stale mark only costs a resync. After a
// crash, NewTap turns the regions still marked active into dirty
// regions, which the next resync copies to the secondary.

// activityRegion is the granularity of the activity log: each region's
// first write after it went inactive costs a metadata sync.
const activityRegion = 64 << 20

// activityBudget is how many regions stay marked once their writes are
// safe (4 GiB): after a crash at most that much more is resynced than
// was written since the journal was last made durable.
const activityBudget = 64

// metaActive is the metadata key of the active regions: their indices,
// big-endian u64s.
const metaActive = "tap.active"

// activity is the tap's activity log; the zero value is off.
type activity struct {
	pmu sync.Mutex // serialises saving the set

	mu    sync.Mutex
	on    bool
	hold  string           // a hold whose records the secondary has
	last  map[int64]uint64 // active region -> last seq written there
	saved map[int64]bool   // regions whose mark is durable
	// budget is how many regions may stay active once their writes are
	// durable or acknowledged (activityBudget unless a test sets it).
	budget int
}

// EnableActivityLog starts the activity log (see activity.go): from now
// on every journaled write's region is durably marked active before the
// store write. hold names the journal hold that the secondary's
// acknowledgements advance. Enable it before replication ships anything.
func (t *Tap) EnableActivityLog(hold string) {
	a := &t.act
	a.mu.Lock()
	defer a.mu.Unlock()
	a.on, a.hold = true, hold
	if a.last == nil {
		a.last, a.saved = map[int64]uint64{}, map[int64]bool{}
	}
	if a.budget == 0 {
		a.budget = activityBudget
	}
}

// DisableActivityLog stops the activity log and forgets its regions.
func (t *Tap) DisableActivityLog(ctx context.Context) error {
	a := &t.act
	a.pmu.Lock()
	defer a.pmu.Unlock()
	a.mu.Lock()
	a.on = false
	clear(a.last)
	clear(a.saved)
	a.mu.Unlock()
	if err := t.log.DeleteMeta(metaActive); err != nil {
		return fmt.Errorf("disable activity log: %w", err)
	}
	return nil
}

// ActiveRegions returns the regions marked active, in disk order.
func (t *Tap) ActiveRegions() []Region {
	a := &t.act
	a.mu.Lock()
	defer a.mu.Unlock()
	idx := make([]int64, 0, len(a.saved))
	for i := range a.saved {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return t.activityRanges(idx)
}

// activityRanges turns region indices into ranges of the disk.
func (t *Tap) activityRanges(idx []int64) []Region {
	out := make([]Region, 0, len(idx))
	for _, i := range idx {
		off := i * activityRegion
		out = append(out, Region{Off: off, Len: min(activityRegion, t.store.Size()-off)})
	}
	return out
}

// activate notes a journaled write of seq over [off, off+length) and,
// when it falls in a region not yet durably active, marks the region and
// syncs the mark before returning. Call it before the store write.
func (t *Tap) activate(ctx context.Context, off, length int64, seq uint64) error {
	a := &t.act
	a.mu.Lock()
	if !a.on || length <= 0 {
		a.mu.Unlock()
		return nil
	}
	need := false
	for i := off / activityRegion; i <= (off+length-1)/activityRegion; i++ {
		a.last[i] = max(a.last[i], seq)
		if !a.saved[i] {
			need = true
		}
	}
	a.mu.Unlock()
	if !need {
		return nil
	}
	a.pmu.Lock()
	defer a.pmu.Unlock()
	a.mu.Lock()
	var fresh []int64
	for i := off / activityRegion; i <= (off+length-1)/activityRegion; i++ {
		if !a.saved[i] {
			fresh = append(fresh, i)
		}
	}
	set := a.encodeLocked(fresh)
	a.mu.Unlock()
	if len(fresh) == 0 {
		return nil // saved by another write meanwhile
	}
	if err := t.log.SetMeta(metaActive, set); err != nil {
		return fmt.Errorf("activity log: %w", err)
	}
	if err := t.log.SyncMeta(ctx); err != nil {
		return fmt.Errorf("activity log: %w", err)
	}
	a.mu.Lock()
	for _, i := range fresh {
		a.saved[i] = true
	}
	a.mu.Unlock()
	return nil
}

// encodeLocked encodes the saved regions plus extra. a.mu held.
func (a *activity) encodeLocked(extra []int64) []byte {
	idx := make([]int64, 0, len(a.saved)+len(extra))
	for i := range a.saved {
		idx = append(idx, i)
	}
	idx = append(idx, extra...)
	slices.Sort(idx)
	idx = slices.Compact(idx)
	b := make([]byte, 0, 8*len(idx))
	for _, i := range idx {
		b = binary.BigEndian.AppendUint64(b, uint64(i))
	}
	return b
}

// settle makes regions inactive and saves the set (without a sync). A
// region may go inactive once every write in it is in a record through
// durable or acknowledged by the secondary; as DRBD keeps hot extents,
// only the least recently written of those go, down to the budget, so a
// working set that fits keeps its marks and costs no sync per run of
// writes. With final (Close) every such region goes. The applier calls
// it after each checkpoint.
func (t *Tap) settle(durable uint64, final bool) error {
	a := &t.act
	a.pmu.Lock()
	defer a.pmu.Unlock()
	a.mu.Lock()
	if !a.on {
		a.mu.Unlock()
		return nil
	}
	if acked, ok := t.log.Holds()[a.hold]; ok {
		durable = max(durable, acked)
	}
	var idle []int64
	for i, seq := range a.last {
		if seq <= durable {
			idle = append(idle, i)
		}
	}
	keep := a.budget
	if final {
		keep = 0
	}
	slices.SortFunc(idle, func(x, y int64) int { return cmp.Compare(a.last[x], a.last[y]) })
	changed := false
	for _, i := range idle {
		if len(a.last) <= keep {
			break
		}
		delete(a.last, i)
		if a.saved[i] {
			delete(a.saved, i)
			changed = true
		}
	}
	set := a.encodeLocked(nil)
	a.mu.Unlock()
	if !changed {
		return nil
	}
	if len(set) == 0 {
		return t.log.DeleteMeta(metaActive)
	}
	return t.log.SetMeta(metaActive, set)
}

// recoverActivity turns the regions a crash left marked active into dirty
// regions (persisted and synced first), then clears the marks. NewTap
// calls it.
func (t *Tap) recoverActivity(ctx context.Context) error {
	v, err := t.log.Meta(metaActive)
	if errors.Is(err, journal.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read activity log: %w", err)
	}
	if len(v)%8 != 0 {
		return fmt.Errorf("activity log: %d bytes, not a list of u64", len(v))
	}
	var idx []int64
	for p := v; len(p) > 0; p = p[8:] {
		i := int64(binary.BigEndian.Uint64(p))
		if i < 0 || i*activityRegion >= t.store.Size() {
			return fmt.Errorf("activity log: region %d outside the disk", i)
		}
		idx = append(idx, i)
	}
	regions := t.activityRanges(idx)
	for _, r := range regions {
		t.dirty.Mark(r.Off, r.Len)
	}
	if err := t.persistDirty(ctx, true); err != nil {
		return fmt.Errorf("activity log: %w", err)
	}
	if err := t.log.DeleteMeta(metaActive); err != nil {
		return fmt.Errorf("activity log: %w", err)
	}
	if len(regions) > 0 {
		t.logger.Warn("unclean shutdown: regions written since the journal was last made durable will be resynced",
			"regions", len(regions), "region_bytes", activityRegion)
	}
	return nil
}
