package replication

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tandem-dr/tandem/journal"
)

// The receiver's pipelined path. While the replica is streaming (no sync
// in progress), records frames are decoded in place, verified and added
// to the queued group, which the appender goroutine takes as soon as it
// is idle: it appends the group to the sink, durably, and acknowledges
// it, while the receiver already reads, decrypts and verifies the next
// frames into the next group. For a DeferredApplier the appender then
// hands the group to the applier goroutine, which applies it to the store
// while the appender appends the next group: the acknowledgement of a
// group waits for the journal's write of the group before it, never for
// the store's. So a record never waits for the network, and the slower the
// sink the larger its groups, each paying for one fdatasync (group
// commit). A full group makes the receiver wait, which is the pipeline's
// backpressure. During a sync, the appender likewise stages each region
// frame's data while the receiver reads the next frame. Every other frame
// (and every record during a sync) first waits until the appender is idle
// (drain) and is then served as before, in order; so does SyncProgress.

// job is work for the appender goroutine: a group of records to append
// (and acknowledge), or a region of a sync to stage.
type job interface {
	do(ctx context.Context, r *receiver) error
}

// regionJob is a region frame's data, to stage; buf is the frame buffer
// it aliases, given back once staged.
type regionJob struct {
	off  int64
	data []byte
	buf  []byte
}

func (j *regionJob) do(ctx context.Context, r *receiver) error {
	defer r.fr.recycle([][]byte{j.buf})
	if err := r.sink.WriteRegion(ctx, j.off, j.data); err != nil {
		_ = r.conn.SetReadDeadline(time.Now()) // the reader stops
		return refuse(errCodeSink, fmt.Errorf("write region off=%d len=%d: %w", j.off, len(j.data), err))
	}
	return nil
}

func (g *group) do(ctx context.Context, r *receiver) error { return r.appendGroup(ctx, g) }

// group is a run of verified records on their way to the sink, and the
// frame buffers their Data aliases.
type group struct {
	recs  []journal.Record
	bytes int
	bufs  [][]byte
	next  Position // the chain position after the group
}

// streaming reports whether records frames take the pipelined path.
func (r *receiver) streaming() bool {
	return r.st.Sync == nil && r.st.Initialized && len(r.pending) == 0
}

// onStreamRecords decodes a records frame in place and verifies that it
// follows the chain with no gap; only then does it join the queued group,
// or start one. A bad frame refuses the connection: nothing of it is
// appended (the groups before it are sound, and may be). While the
// appender is busy the queued group grows, up to streamMaxBytes: the
// busier the sink, the larger its groups (group commit).
func (r *receiver) onStreamRecords(f frame) error {
	a := &r.ap
	a.mu.Lock()
	defer a.mu.Unlock()
	g, _ := a.queued.(*group)
	for a.err == nil && a.queued != nil && (g == nil || !g.open()) {
		a.wake.Wait() // backpressure: a job or a full group is waiting
		g, _ = a.queued.(*group)
	}
	if a.err != nil {
		return a.err
	}
	if g == nil {
		g = &group{next: r.next}
	}
	n0 := len(g.recs)
	recs, err := decodeRecordViews(f.payload, g.recs)
	if err != nil {
		g.recs = g.recs[:n0]
		return refuse(errCodeCorrupt, err)
	}
	next, bytes, err := r.checkChain(recs[n0:], g.next)
	if err != nil {
		g.recs = recs[:n0]
		return err
	}
	g.recs, g.next, g.bytes = recs, next, g.bytes+bytes
	g.bufs = append(g.bufs, r.fr.take(f))
	r.next = next
	if a.queued == nil {
		a.queued = g
		a.wake.Broadcast()
	}
	return nil
}

// open reports whether more records may join g.
func (g *group) open() bool {
	return g.bytes < streamMaxBytes && len(g.recs) < groupMaxRecords
}

// appender is the state the receiver shares with its appender and
// applier goroutines: one job queued and one running at most, and one
// appended group being applied. The appender takes the queued job as soon
// as it is idle; the receiver adds records to a queued group until it is
// taken. The appender hands an appended group to the applier once the
// applier is idle.
type appender struct {
	mu       sync.Mutex
	wake     sync.Cond // broadcast on every change below
	queued   job       // handed over, not yet taken
	running  bool      // the appender is doing a job
	toApply  *group    // appended, not yet taken by the applier
	applying bool      // the applier is applying a group
	err      error     // the first error: no job is done after it
	stopped  bool      // the receiver is done handing over jobs
	ended    bool      // the appender goroutine returned: nothing more to apply
	done     sync.WaitGroup
}

// startAppender starts the goroutine that does the handed-over jobs.
func (r *receiver) startAppender(ctx context.Context) {
	a := &r.ap
	a.wake.L = &a.mu
	a.done.Add(2)
	go r.applyGroups(ctx)
	go func() {
		defer a.done.Done()
		a.mu.Lock()
		defer a.mu.Unlock()
		defer func() {
			a.ended = true
			a.wake.Broadcast()
		}()
		for {
			for (a.queued == nil || a.err != nil) && !a.stopped {
				a.wake.Wait()
			}
			if a.queued == nil || a.err != nil {
				return // stopped
			}
			j := a.queued
			a.queued = nil
			a.run(&a.running, func() error { return j.do(ctx, r) })
		}
	}()
}

// run calls fn with a.mu released and *busy set meanwhile, and keeps its
// error as a.err unless an earlier one is there. a.mu held.
func (a *appender) run(busy *bool, fn func() error) {
	*busy = true
	a.wake.Broadcast()
	a.mu.Unlock()
	err := fn()
	a.mu.Lock()
	*busy = false
	if err != nil && a.err == nil {
		a.err = err
	}
	a.wake.Broadcast()
}

// applyGroups is the applier goroutine: it applies the groups the
// appender hands it, in order, until the appender has ended and handed
// over its last. A group appended durably is applied even after a
// failure: the store follows the journal, whatever becomes of the
// connection.
func (r *receiver) applyGroups(ctx context.Context) {
	a := &r.ap
	defer a.done.Done()
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		for a.toApply == nil && !a.ended {
			a.wake.Wait()
		}
		g := a.toApply
		if g == nil {
			return
		}
		a.toApply = nil
		a.run(&a.applying, func() error { return r.applyGroup(ctx, g) })
	}
}

// applyGroup applies g, appended durably, to the DeferredApplier sink and
// gives back its buffers. On failure it wakes the receiver's read, which
// then returns the error.
func (r *receiver) applyGroup(ctx context.Context, g *group) error {
	defer r.release(g)
	if err := r.sink.(DeferredApplier).Apply(ctx, g.recs); err != nil {
		_ = r.conn.SetReadDeadline(time.Now()) // the reader stops
		first, last := g.recs[0].Seq, g.recs[len(g.recs)-1].Seq
		return refuse(errCodeSink, fmt.Errorf("apply received seq=%d..%d: %w", first, last, err))
	}
	return nil
}

// release drops g's references to its frame buffers and gives them back.
func (r *receiver) release(g *group) {
	clear(g.recs)
	r.fr.recycle(g.bufs)
}

// handToApplier hands g, appended durably, to the applier once it is
// idle.
func (r *receiver) handToApplier(g *group) {
	a := &r.ap
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.toApply != nil || a.applying {
		a.wake.Wait()
	}
	a.toApply = g
	a.wake.Broadcast()
}

// appendGroup appends g to the sink, durably, moves the head and the
// consistent point over it and acknowledges them; a DeferredApplier's
// group then goes to the applier. On failure it wakes the receiver's
// read, which then returns the appender's error.
func (r *receiver) appendGroup(ctx context.Context, g *group) error {
	first, last := g.recs[0].Seq, g.recs[len(g.recs)-1].Seq
	da, deferred := r.sink.(DeferredApplier)
	var err error
	if deferred {
		err = da.AppendDurable(ctx, g.recs)
	} else {
		err = r.sink.AppendReceived(ctx, g.recs)
	}
	durable := err == nil
	if err != nil {
		err = refuse(errCodeSink, fmt.Errorf("append received seq=%d..%d: %w", first, last, err))
	} else {
		r.st.Head = g.next
		r.st.Consistent = g.next.Seq
		err = r.ack()
	}
	if deferred && durable {
		// Acknowledged (or the link failed after the append): the store
		// follows, whatever becomes of the connection.
		r.handToApplier(g)
	} else {
		r.release(g)
	}
	if err != nil {
		_ = r.conn.SetReadDeadline(time.Now()) // the reader stops
	}
	return err
}

// handOverJob queues j once the appender is idle, and returns without
// waiting for it.
func (r *receiver) handOverJob(j job) error {
	a := &r.ap
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.idleLocked(); err != nil {
		return err
	}
	a.queued = j
	a.wake.Broadcast()
	return nil
}

// drain waits until the appender has done every job queued, and returns
// its error.
func (r *receiver) drain() error {
	a := &r.ap
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.idleLocked()
}

// idleLocked waits until no job is queued or running and no group is
// being applied, or one failed.
func (a *appender) idleLocked() error {
	for a.err == nil && (a.queued != nil || a.running || a.toApply != nil || a.applying) {
		a.wake.Wait()
	}
	return a.err
}

// stopAppender waits for the appender to do the jobs queued (the records
// received are sound, though the connection may be gone) and the applier
// to apply what was appended, and returns the error of a job that failed.
func (r *receiver) stopAppender() error {
	a := &r.ap
	a.mu.Lock()
	a.stopped = true
	a.wake.Broadcast()
	a.mu.Unlock()
	a.done.Wait()
	return a.err
}
