package replication

import (
	"context"
	"fmt"
	"time"

	"github.com/tandem-dr/tandem/journal"
)

// The receiver's pipelined path. While the replica is streaming (no sync
// in progress), records frames are decoded in place, verified and
// gathered into a group, and a group goes to the appender goroutine,
// which appends it to the sink, durably, and acknowledges it (then, for a
// DeferredApplier, applies it to the store), while the
// receiver already reads, decrypts and verifies the next one. A group is
// handed over when it is full or when nothing more is buffered, so a
// record never waits for the network; handing over waits for the group
// before it, which is the pipeline's backpressure. During a sync, the
// appender likewise stages each region frame's data while the receiver
// reads the next frame. Every other frame (and every record during a
// sync) first waits until the appender is idle (drain) and is then
// served as before, in order; so does SyncProgress.

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

// startAppender starts the goroutine that appends handed-over groups.
func (r *receiver) startAppender(ctx context.Context) {
	r.work = make(chan job, 1)
	r.results = make(chan error, 1)
	r.appender.Add(1)
	go func() {
		defer r.appender.Done()
		for j := range r.work {
			r.results <- j.do(ctx, r)
		}
	}()
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
	clear(g.recs) // drop references to the buffers
	r.fr.recycle(g.bufs)
	if err != nil {
		_ = r.conn.SetReadDeadline(time.Now()) // the reader stops
	}
	return err
}

// handOver gives the current group, if any, to the appender once it is
// done with the one before, and returns without waiting for it.
func (r *receiver) handOver() error {
	if err := r.idleAppender(); err != nil {
		return err
	}
	if r.cur != nil {
		r.work <- r.cur // the appender is idle: this does not block
		r.cur, r.busy = nil, true
	}
	return nil
}

// handOverJob gives j to the appender once it is done with the job
// before, and returns without waiting for it.
func (r *receiver) handOverJob(j job) error {
	if err := r.handOver(); err != nil {
		return err
	}
	if err := r.idleAppender(); err != nil {
		return err
	}
	r.work <- j
	r.busy = true
	return nil
}

// drain hands over the current group and waits until the appender is
// idle, returning its error.
func (r *receiver) drain() error {
	if err := r.handOver(); err != nil {
		return err
	}
	return r.idleAppender()
}

// idleAppender waits for the result of the group handed over last, if
// it was not taken yet, and returns it.
func (r *receiver) idleAppender() error {
	if !r.busy {
		return nil
	}
	r.busy = false
	return <-r.results
}

// stopAppender waits for the appender to finish and returns the error of
// a group whose result was not yet taken.
func (r *receiver) stopAppender() error {
	err := r.idleAppender()
	close(r.work)
	r.appender.Wait()
	return err
}
