package journal

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Append assigns rec the next Seq, the current Time, PrevSum and Sum,
// reserves its place in the log's current segment and writes it there
// (one pwritev from rec.Data, outside the log's lock, concurrently with
// other appends). It returns once the write is done or failed, without
// waiting for the records before it: Wait on the Pending for the commit,
// which is when every record up to this one is written. rec.Data is not
// retained. Seqs are dense and follow the order of Append calls. It fails
// with an error wrapping ErrFull, without appending, when the record
// would take the log past Options.MaxBytes.
func (l *Log) Append(ctx context.Context, rec Record) (*Pending, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	size := int64(rec.EncodedSize())
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, fmt.Errorf("append journal %s: %w", l.name, ErrClosed)
	}
	rec.Seq = l.head + 1
	if err := rec.Validate(); err != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("append journal %s: %w", l.name, err)
	}
	if used := l.bytes; used+size > l.s.opts.MaxBytes {
		l.mu.Unlock()
		return nil, fmt.Errorf("append journal %s seq=%d: %w (%d of %d bytes)", l.name, rec.Seq, ErrFull, used, l.s.opts.MaxBytes)
	}
	if err := l.s.admit(size, false); err != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("append journal %s seq=%d: %w", l.name, rec.Seq, err)
	}
	rec.Time = time.Now().UTC()
	rec.Seal(l.headSum)
	w, lead, err := l.reserveLocked(&rec, size)
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	l.await(w, lead)
	return w.p, nil
}

// reserveLocked gives a sealed record that follows the head its place:
// a segment and offset, a Pending and a place in the write queue. It
// reports whether the caller must write the queue (nobody else does);
// either way the caller must then call await. l.mu held.
func (l *Log) reserveLocked(rec *Record, size int64) (w *wentry, lead bool, err error) {
	var g *segment
	if n := len(l.segs); n > 0 && l.segs[n-1].end+size <= l.s.opts.SegmentSize {
		g = l.segs[n-1]
	} else {
		ng, err := l.s.newSegment(l.id, rec.Seq)
		if err != nil {
			return nil, false, fmt.Errorf("append journal %s seq=%d: %w", l.name, rec.Seq, err)
		}
		g = ng
		l.segs = append(l.segs, g)
		if l.direct {
			if err := g.openDirect(); err != nil {
				l.s.log.Warn("journal: writing through the page cache", logKeyLog, l.name, logKeyErr, err)
			}
		}
	}
	w = &wentry{
		seq: rec.Seq, sum: rec.Sum, epoch: l.epoch,
		p:   &Pending{seq: rec.Seq, done: make(chan struct{})},
		seg: g, off: g.end, data: rec.Data, sig: make(chan bool, 1),
	}
	rec.putHeader(w.hdr[:])
	binary.BigEndian.PutUint64(w.hdr[42:], rec.Sum)
	g.end += size
	l.inflight = append(l.inflight, w)
	l.wq = append(l.wq, w)
	l.head, l.headSum = rec.Seq, rec.Sum
	l.recs = append(l.recs, recInfo{seq: rec.Seq, sum: rec.Sum, size: size, off: w.off, at: rec.Time.UnixNano(), seg: g})
	l.bytes += size
	l.writers.Add(1)
	lead = !l.writing
	l.writing = true
	return w, lead, nil
}

// await returns once w is written or failed: at once the caller is no
// longer needed to keep w.data. When the caller leads (or is made to), it
// writes the queue itself.
func (l *Log) await(w *wentry, lead bool) {
	defer l.writers.Done()
	if !lead && !<-w.sig {
		return
	}
	l.writeQueued(w)
}

// Limits of one group write.
const (
	maxGroupRecords = 256
	maxGroupBytes   = 8 << 20
)

// writeQueued is group commit without a committer goroutine: the one
// goroutine that writes (the leader, w's owner) takes everything queued,
// which lies contiguously in the segment in seq order, and writes it with
// one pwritev per segment; then it completes those records and, when more
// queued up meanwhile, hands the writing to the owner of the first of
// them, so that nobody writes for others for long. The records' owners
// wait in await until theirs is written, which keeps their buffers valid.
func (l *Log) writeQueued(w *wentry) {
	l.mu.Lock()
	n, bytes := 0, int64(0)
	for n < len(l.wq) && n < maxGroupRecords && (n == 0 || bytes+int64(len(l.wq[n].data)) <= maxGroupBytes) {
		bytes += HeaderSize + int64(len(l.wq[n].data))
		n++
	}
	batch := l.wq[:n:n]
	l.wq = l.wq[n:]
	if len(l.wq) == 0 {
		l.wq = nil
	}
	l.mu.Unlock()

	var failed *wentry
	var err error
	for i := 0; i < len(batch) && failed == nil; {
		j := i + 1
		for j < len(batch) && batch[j].seg == batch[i].seg {
			j++
		}
		iov := make([][]byte, 0, 2*(j-i))
		for _, e := range batch[i:j] {
			iov = append(iov, e.hdr[:])
			if len(e.data) > 0 {
				iov = append(iov, e.data)
			}
		}
		g := batch[i].seg
		var werr error
		if g.dw != nil {
			werr = l.s.writeDirect(g, iov, batch[i].off)
		} else {
			werr = g.writev(iov, batch[i].off)
		}
		if werr != nil {
			failed, err = batch[i], fmt.Errorf("append journal %s seq=%d-%d: %w", l.name, batch[i].seq, batch[j-1].seq, werr)
		}
		i = j
	}

	l.mu.Lock()
	var wake []*wentry
	if failed != nil {
		wake = l.failLocked(failed, err)
	} else {
		for _, e := range batch {
			if e.epoch == l.epoch {
				l.s.noteDirty(e.seg)
				e.done = true
			}
		}
		l.advanceLocked()
	}
	var next *wentry
	if len(l.wq) > 0 {
		next = l.wq[0]
	} else {
		l.writing = false
	}
	l.mu.Unlock()
	for _, e := range batch {
		if e != w {
			e.sig <- false
		}
	}
	for _, e := range wake {
		e.sig <- false
	}
	if next != nil {
		next.sig <- true
	}
}

// advanceLocked moves the commit point over the written prefix of the
// in-flight records, completing their Pendings in order. l.mu held.
func (l *Log) advanceLocked() {
	advanced := false
	for len(l.inflight) > 0 && l.inflight[0].done {
		e := l.inflight[0]
		l.inflight[0] = nil
		l.inflight = l.inflight[1:]
		l.commitSeq, l.commitSum = e.seq, e.sum
		close(e.p.done)
		advanced = true
	}
	if advanced {
		l.wakeLocked()
	}
}

// failLocked handles a failed write: it fails failed and every record
// after it and rolls the log back. It returns the queued records whose
// owners wait to be told. l.mu held.
func (l *Log) failLocked(failed *wentry, err error) []*wentry {
	l.s.log.Error("journal write failed", logKeyLog, l.name, logKeySeq, failed.seq, logKeyErr, err)
	wake := l.wq
	l.wq = nil
	l.rollbackLocked(failed, err)
	return wake
}

// rollbackLocked fails every in-flight record (failed with err, the
// others with ErrAborted) and moves the head back to the commit point.
// l.mu held.
func (l *Log) rollbackLocked(failed *wentry, err error) {
	for _, e := range l.inflight {
		if e == failed {
			e.p.err = err
		} else {
			e.p.err = fmt.Errorf("append journal %s seq=%d: %w (seq %d failed)", l.name, e.seq, ErrAborted, failed.seq)
		}
		close(e.p.done)
	}
	l.inflight = nil
	l.epoch++
	l.head, l.headSum = l.commitSeq, l.commitSum
	for n := len(l.recs); n > l.recs0 && l.recs[n-1].seq > l.commitSeq; n-- {
		l.bytes -= l.recs[n-1].size
		l.recs = l.recs[:n-1]
	}
	// Segments that start past the next seq hold only failed records.
	keep := len(l.segs)
	for keep > 0 && l.segs[keep-1].first > l.head+1 {
		keep--
	}
	retire := dropSegmentsLocked(l.segs[keep:])
	l.segs = l.segs[:keep]
	if keep > 0 {
		g := l.segs[keep-1]
		g.end = 0
		if n := len(l.recs); n > l.recs0 && l.recs[n-1].seg == g {
			g.end = l.recs[n-1].off + l.recs[n-1].size
		}
	}
	l.wakeLocked()
	for _, g := range retire {
		l.s.retire(g)
	}
}

// Sync returns once every record appended before the call is committed
// and its segment fdatasynced, and the metadata set before it synced: it
// survives a power cut. Concurrent Syncs share one round of fdatasyncs.
// It does not report the failure of individual records: their Pending
// does.
func (l *Log) Sync(ctx context.Context) error {
	l.mu.Lock()
	target, epoch := l.head, l.epoch
	l.mu.Unlock()
	if err := l.waitCommit(ctx, "sync", func() bool { return l.commitSeq >= target || l.epoch != epoch }); err != nil {
		return err
	}
	if err := l.s.syncBarrier(ctx); err != nil {
		return fmt.Errorf("sync journal %s: %w", l.name, err)
	}
	return nil
}

// AppendReceived appends records that already carry their Seq, Time and
// sums, as the secondary receives them from the primary. The first must
// follow the head (Seq = Head+1, PrevSum = the head's Sum; see Rebase for
// a log that starts mid-chain) and each must verify against the one
// before: gaps, duplicates and bad sums are refused with an error
// wrapping ErrCorrupt, and then nothing is appended. It returns once the
// records are committed and synced. Options.MaxBytes does not apply.
func (l *Log) AppendReceived(ctx context.Context, recs []Record) error {
	return l.appendReceived(ctx, recs, true)
}

// AppendVerified is AppendReceived for records the caller has verified
// (Record.Verify against the sum each follows, as the replication
// receiver does before anything else): it checks their structure and that
// they follow the head, seq by seq and sum by sum, but does not hash
// their data again.
func (l *Log) AppendVerified(ctx context.Context, recs []Record) error {
	return l.appendReceived(ctx, recs, false)
}

func (l *Log) appendReceived(ctx context.Context, recs []Record, verify bool) error {
	if len(recs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("append received to %s: %w", l.name, ErrClosed)
	}
	seq, prev := l.head, l.headSum
	for i := range recs {
		r := &recs[i]
		if r.Seq != seq+1 {
			l.mu.Unlock()
			return fmt.Errorf("append received to %s: %w: seq %d after %d", l.name, ErrCorrupt, r.Seq, seq)
		}
		var err error
		if verify {
			err = r.Verify(prev) // structure, link and sum
		} else if err = r.Validate(); err == nil && r.PrevSum != prev {
			err = fmt.Errorf("%w: seq=%d chain broken: prev sum %016x, want %016x", ErrCorrupt, r.Seq, r.PrevSum, prev)
		}
		if err != nil {
			l.mu.Unlock()
			return fmt.Errorf("append received to %s: %w", l.name, err)
		}
		seq, prev = r.Seq, r.Sum
	}
	if !l.direct {
		// Received records are the secondary's retention: written once,
		// read rarely, so they bypass the page cache (see direct.go).
		l.direct = true
		if n := len(l.segs); n > 0 && !l.writing { // nobody writes it meanwhile
			if err := l.segs[n-1].openDirect(); err != nil {
				l.s.log.Warn("journal: writing through the page cache", logKeyLog, l.name, logKeyErr, err)
			}
		}
	}
	var total int64
	for i := range recs {
		total += int64(recs[i].EncodedSize())
	}
	if err := l.s.admit(total, false); err != nil {
		l.mu.Unlock()
		return fmt.Errorf("append received to %s: %w", l.name, err)
	}
	ws := make([]*wentry, 0, len(recs))
	leads := make([]bool, 0, len(recs))
	var rerr error
	for i := range recs {
		w, lead, err := l.reserveLocked(&recs[i], int64(recs[i].EncodedSize()))
		if err != nil {
			rerr = err
			break
		}
		ws = append(ws, w)
		leads = append(leads, lead)
	}
	l.mu.Unlock()
	for i, w := range ws {
		l.await(w, leads[i])
	}
	if rerr != nil {
		return fmt.Errorf("append received: %w", rerr)
	}
	for _, w := range ws {
		if err := w.p.Wait(ctx); err != nil {
			return fmt.Errorf("append received to %s: %w", l.name, err)
		}
	}
	return l.Sync(ctx)
}

// Rebase makes an empty log (no unreleased records) continue a chain
// whose last record was seq with sum: the next record must be seq+1 with
// PrevSum sum. The secondary calls it before the first AppendReceived of
// a chain that it did not receive from its start. It fails on a log that
// holds unreleased records.
func (l *Log) Rebase(ctx context.Context, seq, sum uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.relMu.Lock()
	defer l.relMu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("rebase journal %s: %w", l.name, ErrClosed)
	}
	if n := l.head - l.base; n != 0 {
		l.mu.Unlock()
		return fmt.Errorf("rebase journal %s: %d unreleased records", l.name, n)
	}
	l.mu.Unlock()
	v := append(u64(seq), u64(sum)...)
	if err := l.s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(baseKey(l.id), v); err != nil {
			return err
		}
		return txn.Set(syncedKey(l.id), u64(seq))
	}); err != nil {
		return fmt.Errorf("rebase journal %s: %w", l.name, err)
	}
	l.s.metaDirty.Store(true)
	l.mu.Lock()
	l.base, l.baseSum = seq, sum
	l.head, l.headSum = seq, sum
	l.commitSeq, l.commitSum = seq, sum
	l.durable = seq
	// Every segment holds only released records: the next append starts
	// a new one at seq+1.
	retire := dropSegmentsLocked(l.segs)
	l.segs = nil
	l.mu.Unlock()
	for _, g := range retire {
		l.s.retire(g)
	}
	return nil
}

// WaitAfter blocks until a record with a seq above seq is committed (and
// so readable with ReadFrom), ctx ends or the log closes.
func (l *Log) WaitAfter(ctx context.Context, seq uint64) error {
	return l.waitCommit(ctx, "wait", func() bool { return l.commitSeq > seq })
}

// waitCommit blocks until done (called with l.mu held, at first and after
// each commit) reports true, ctx ends, or the log closes (an error naming
// op).
func (l *Log) waitCommit(ctx context.Context, op string, done func() bool) error {
	for {
		l.mu.Lock()
		if done() {
			l.mu.Unlock()
			return nil
		}
		if l.closed {
			l.mu.Unlock()
			return fmt.Errorf("%s journal %s: %w", op, l.name, ErrClosed)
		}
		ch := l.notify
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
