package replication

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tandem-dr/tandem/journal"
)

// The receiver's pipelined path. While the replica is streaming (no sync
// in progress), records frames are decoded in place, verified and
// gathered into a group, and a group goes to the appender goroutine
// through a queue (appendQueue); the appender appends everything queued
// as one, durably, and acknowledges it (then, for a DeferredApplier,
// applies it to the store), while the receiver already reads, decrypts
// and verifies the next frames. A group is queued when it is full or when
// nothing more is buffered, so a record never waits for the network; the
// queue's bound is the pipeline's backpressure, and the slower the sink,
// the larger its appends. Every other frame (and every record during a
// sync) first waits until the appender is idle (drain) and is then served
// as before, in order.

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
// follows the chain with no gap; only then does it join the current
// group. A bad frame refuses the connection: nothing of it is appended
// (the groups before it are sound, and may be).
func (r *receiver) onStreamRecords(f frame) error {
	g := r.cur
	if g == nil {
		g = &group{next: r.next}
		r.cur = g
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
	if g.bytes >= streamMaxBytes || len(g.recs) >= groupMaxRecords {
		return r.handOver()
	}
	return nil
}

// appendQueue carries groups from the receiver to the appender. The
// receiver queues a group without waiting for the appender as long as
// less than streamMaxBytes wait (the pipeline's backpressure); the
// appender takes every group queued, up to streamMaxBytes, and appends
// them as one, so that the slower the sink, the larger and fewer its
// appends (and syncs).
type appendQueue struct {
	mu     sync.Mutex
	cond   sync.Cond // broadcast on every change
	groups []*group
	bytes  int   // of the queued groups' records
	busy   bool  // the appender holds groups it took
	closed bool  // no more groups come
	err    error // the first failure of the appender
}

func newAppendQueue() *appendQueue {
	q := &appendQueue{}
	q.cond.L = &q.mu
	return q
}

// push queues g, first waiting while the queue is full. It returns the
// appender's failure instead, if any.
func (q *appendQueue) push(g *group) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.bytes >= streamMaxBytes && q.err == nil {
		q.cond.Wait()
	}
	if q.err != nil {
		return q.err
	}
	q.groups = append(q.groups, g)
	q.bytes += g.bytes
	q.cond.Broadcast()
	return nil
}

// take waits for queued groups and takes them, up to streamMaxBytes of
// records (at least one group); it reports false once the queue is
// closed and empty, and whether the appender failed before. The appender
// calls done when it is through with them.
func (q *appendQueue) take(into []*group) (gs []*group, failed, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.groups) == 0 && !q.closed {
		q.cond.Wait()
	}
	if len(q.groups) == 0 {
		return into, q.err != nil, false
	}
	n, bytes := 0, 0
	for n < len(q.groups) && (n == 0 || bytes+q.groups[n].bytes <= streamMaxBytes) {
		bytes += q.groups[n].bytes
		n++
	}
	into = append(into, q.groups[:n]...)
	q.groups = append(q.groups[:0], q.groups[n:]...)
	q.bytes -= bytes
	q.busy = true
	q.cond.Broadcast()
	return into, q.err != nil, true
}

// done ends the appender's hold of the groups it took last, with its
// failure, if any.
func (q *appendQueue) done(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.busy = false
	if q.err == nil {
		q.err = err
	}
	q.cond.Broadcast()
}

// wait waits until every queued group is appended, and returns the
// appender's failure, if any.
func (q *appendQueue) wait() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for (len(q.groups) > 0 || q.busy) && q.err == nil {
		q.cond.Wait()
	}
	return q.err
}

// close tells the appender that no more groups come.
func (q *appendQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.cond.Broadcast()
}

// startAppender starts the goroutine that appends queued groups.
func (r *receiver) startAppender(ctx context.Context) {
	r.queue = newAppendQueue()
	r.appender.Add(1)
	go func() {
		defer r.appender.Done()
		var taken []*group
		merged := &group{}
		for {
			gs, failed, ok := r.queue.take(taken[:0])
			if !ok {
				return
			}
			taken = gs
			g := gs[0]
			if len(gs) > 1 {
				g = merged.merge(gs)
			}
			var err error
			if !failed {
				err = r.appendGroup(ctx, g)
			}
			// After a failure nothing more is appended: the
			// groups only give their buffers back.
			clear(g.recs) // drop references to the buffers
			r.fr.recycle(g.bufs)
			clear(gs)
			r.queue.done(err)
		}
	}()
}

// merge makes m the concatenation of the consecutive groups gs, reusing
// m's slices, and returns it.
func (m *group) merge(gs []*group) *group {
	m.recs, m.bufs, m.bytes = m.recs[:0], m.bufs[:0], 0
	for _, g := range gs {
		m.recs = append(m.recs, g.recs...)
		m.bufs = append(m.bufs, g.bufs...)
		m.bytes += g.bytes
		m.next = g.next
	}
	return m
}

// appendGroup appends g to the sink, durably, moves the head and the
// consistent point over it and acknowledges them. On failure it wakes the
// receiver's read, which then returns the appender's error.
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
	if deferred && (err == nil || durable) {
		// Acknowledged (or the link failed after the append): the store
		// follows, whatever becomes of the connection.
		if aerr := da.Apply(ctx, g.recs); aerr != nil && err == nil {
			err = refuse(errCodeSink, fmt.Errorf("apply received seq=%d..%d: %w", first, last, aerr))
		}
	}
	if err != nil {
		_ = r.conn.SetReadDeadline(time.Now()) // the reader stops
	}
	return err
}

// handOver queues the current group, if any, for the appender, without
// waiting for it unless the queue is full.
func (r *receiver) handOver() error {
	if r.cur == nil {
		return nil
	}
	g := r.cur
	r.cur = nil
	return r.queue.push(g)
}

// drain hands over the current group and waits until the appender is
// idle, returning its error.
func (r *receiver) drain() error {
	if err := r.handOver(); err != nil {
		return err
	}
	return r.queue.wait()
}

// stopAppender waits for the appender to append what was queued and
// finish, and returns its failure, if any.
func (r *receiver) stopAppender() error {
	r.queue.close()
	r.appender.Wait()
	return r.queue.wait()
}
