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
	if time.Duration(od.meta.Policy.Retention) == p.Retention {
		return
	}
	m := od.meta
	m.Policy.Retention = Duration(p.Retention)
	if err := writeJSONFile(d.metaPath(name), m); err != nil {
		d.log.Warn("replica policy not saved", "disk", name, "peer", site, "err", err)
		return
	}
	od.meta = m
	d.log.Info("replica retention set", "disk", name, "peer", site, "retention", p.Retention.String())
}

// runRetention releases, every retentionEvery until ctx ends, the records
// of each replica's retention journal that are older than its retention
// (a replica whose primary never sent one keeps every record).
func (d *Daemon) runRetention(ctx context.Context) {
	t := time.NewTicker(retentionEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, err := range d.expireReplicas(ctx, time.Now()) {
			d.log.Warn("retention", "err", err)
		}
	}
}

// expireReplicas applies the retention of every replica disk at now.
func (d *Daemon) expireReplicas(ctx context.Context, now time.Time) []error {
	type job struct {
		name   string
		od     *openDisk
		cutoff time.Time
	}
	var jobs []job
	d.mu.Lock()
	for name, od := range d.disks {
		if r := time.Duration(od.meta.Policy.Retention); od.replica != nil && r > 0 {
			jobs = append(jobs, job{name, od, now.Add(-r)})
		}
	}
	d.mu.Unlock()
	var errs []error
	for _, j := range jobs {
		_, err := j.od.replica.Expire(ctx, j.cutoff)
		if err != nil && ctx.Err() == nil && !errors.Is(err, replica.ErrClosed) { // closed: removed meanwhile
			errs = append(errs, fmt.Errorf("expire replica %s before %s: %w", j.name, j.cutoff.Format(time.RFC3339), err))
		}
	}
	return errs
}
