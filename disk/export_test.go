package disk

import "github.com/tandem-dr/tandem/journal"

// SetBeforeAppend makes every journaled write call f as its Append
// begins (after the tap counted it as appending). Set before any write.
func SetBeforeAppend(t *Tap, f func(journal.Record)) { t.beforeAppend = f }

// SettleActivity runs the checkpoint's activity-log step now.
func SettleActivity(t *Tap) error { return t.settle(t.syncedSeq.Load(), false) }

// SetActivityBudget sets how many safe regions stay active.
func SetActivityBudget(t *Tap, n int) {
	t.act.mu.Lock()
	defer t.act.mu.Unlock()
	t.act.budget = n
}

// WritesDirect reports whether f has an O_DIRECT descriptor for its
// aligned writes.
func WritesDirect(f *File) bool { return f.direct != nil }
