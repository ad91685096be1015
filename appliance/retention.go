package appliance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tandem-dr/tandem/replica"
	"github.com/tandem-dr/tandem/replication"
)

// retentionEvery is how often the retention policy runs over the replica
// disks: their journals keep records by the second, so a release a
// second late costs a second's worth of space.
const retentionEvery = time.Second

// setReplicaPolicy adopts the policy a primary sent for the replica disk
// name of site (replication.ServerConfig.Policy), saving it with the
// disk when it changed.
func (d *Daemon) setReplicaPolicy(ctx context.Context, site, name string, p replication.Policy) {
	d.mu.Lock()
	defer d.mu.Unlock()
	od, ok := d.disks[name]
	if !ok || od.replica == nil || od.meta.Peer != site {
		return
	}
	// The offset is saved when it moved by more than clockSlack, so that
	// the link's jitter does not rewrite the disk's metadata.
	clockMoved := (time.Duration(od.meta.PeerClock) - p.Clock).Abs() > clockSlack
	if time.Duration(od.meta.Policy.Retention) == p.Retention && !clockMoved {
		return
	}
	m := od.meta
	m.Policy.Retention = Duration(p.Retention)
	if clockMoved {
		m.PeerClock = Duration(p.Clock)
	}
	if err := writeJSONFile(d.metaPath(name), m); err != nil {
		d.log.Warn("replica policy not saved", "disk", name, "peer", site, "err", err)
		return
	}
	od.meta = m
	d.log.Info("replica retention set", "disk", name, "peer", site, "retention", p.Retention.String(),
		"peer_clock_offset", p.Clock.Round(time.Millisecond).String())
}

// clockSlack is how far the measured clock offset of a replica's primary
// may move before it is saved again.
const clockSlack = time.Second

// runPeriodic calls step every interval until ctx ends. step returns
// its failures by key (a disk, a group); a failure is logged, as what,
// when it first appears (or changes), and again when its key works once
// more, not at every step.
func (d *Daemon) runPeriodic(ctx context.Context, every time.Duration, what, keyAttr string, step func(context.Context, time.Time) map[string]error) {
	t := time.NewTicker(every)
	defer t.Stop()
	failing := map[string]string{} // key → the error last logged
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		errs := step(ctx, time.Now())
		for key, err := range errs {
			if failing[key] != err.Error() {
				failing[key] = err.Error()
				d.log.Warn(what, keyAttr, key, "err", err)
			}
		}
		for key := range failing {
			if _, ok := errs[key]; !ok {
				delete(failing, key)
				d.log.Info(what+" works again", keyAttr, key)
			}
		}
	}
}

// expireReplicas applies the retention of every replica disk at now and
// returns the failures by disk.
func (d *Daemon) expireReplicas(ctx context.Context, now time.Time) map[string]error {
	type job struct {
		name   string
		od     *openDisk
		cutoff time.Time
	}
	var jobs []job
	d.mu.Lock()
	for name, od := range d.disks {
		if cutoff, ok := retentionCutoff(now, od.meta); od.replica != nil && ok {
			jobs = append(jobs, job{name, od, cutoff})
		}
	}
	d.mu.Unlock()
	errs := map[string]error{}
	for _, j := range jobs {
		_, err := j.od.replica.Expire(ctx, j.cutoff)
		if err != nil && ctx.Err() == nil && !errors.Is(err, replica.ErrClosed) { // closed: removed meanwhile
			errs[j.name] = fmt.Errorf("expire replica %s: %w", j.name, err)
		}
	}
	return errs
}

// retentionCutoff is the time before which a replica's records expire at
// now; ok is false when it keeps every record. Records carry the
// primary's times, so the cutoff is read on the primary's clock: a skew
// between the sites does not shift the window.
func retentionCutoff(now time.Time, m DiskMeta) (time.Time, bool) {
	r := time.Duration(m.Policy.Retention)
	if r <= 0 {
		return time.Time{}, false
	}
	return now.Add(time.Duration(m.PeerClock)).Add(-r), true
}
