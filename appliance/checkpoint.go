package appliance

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tandem-dr/tandem/disk"
)

// checkpointTick is how often the daemon looks for automatic checkpoints
// that are due; --checkpoint-every is kept to within it.
const checkpointTick = time.Second

// Checkpoint is a tagged recovery point: a marker record in a disk's
// journal, shipped to the secondary with the records around it.
type Checkpoint struct {
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Label string    `json:"label"`
}

// autoLabel labels the automatic checkpoint cut at t. The disks of a
// group, cut together, carry the same label.
func autoLabel(t time.Time) string { return "auto " + t.UTC().Format(time.RFC3339) }

// cutMember is one disk of an automatic cut.
type cutMember struct {
	name string
	od   *openDisk
}

// cutDue cuts, at now, the automatic checkpoints of the protected primary
// disks whose --checkpoint-every has passed since their last one (or
// since the daemon first saw them protected). The disks of one --group
// are cut together, at one instant (disk.Cut holds off their writes
// while the markers are appended), as soon as one of them is due. It
// returns the failures by cut: "disk NAME" or "group NAME".
func (d *Daemon) cutDue(ctx context.Context, now time.Time) map[string]error {
	cuts := map[string][]cutMember{}
	due := map[string]bool{}
	d.mu.Lock()
	for name, od := range d.disks {
		if od.tap == nil || !od.meta.Protected {
			continue
		}
		key := "disk " + name
		if g := od.meta.Policy.Group; g != "" {
			key = "group " + g
		}
		cuts[key] = append(cuts[key], cutMember{name, od})
		if od.cutAt.IsZero() {
			od.cutAt = now
		}
		if now.Sub(od.cutAt) >= time.Duration(od.meta.Policy.withDefaults().CheckpointEvery) {
			due[key] = true
		}
	}
	d.mu.Unlock()

	errs := map[string]error{}
	for key := range due {
		ms := cuts[key]
		slices.SortFunc(ms, func(a, b cutMember) int { return strings.Compare(a.name, b.name) })
		taps := make([]*disk.Tap, len(ms))
		for i, m := range ms {
			taps[i] = m.od.tap
		}
		label := autoLabel(now)
		seqs, err := disk.Cut(ctx, taps, []byte(label))
		gone := false // a disk removed or unprotected meanwhile
		d.mu.Lock()
		for i, m := range ms {
			m.od.cutAt = now // a failed cut is tried again after the interval
			if err == nil {
				m.od.checkpoint = &Checkpoint{Seq: seqs[i], Time: now, Label: label}
			}
			gone = gone || d.disks[m.name] != m.od || !m.od.meta.Protected
		}
		d.mu.Unlock()
		if err != nil && !gone && ctx.Err() == nil {
			errs[key] = fmt.Errorf("cut %d disks: %w", len(ms), err)
		}
	}
	return errs
}
