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
	if l.bytes+size > l.s.opts.MaxBytes {
		l.mu.Unlock()
		return nil, fmt.Errorf("append journal %s seq=%d: %w (%d of %d bytes)", l.name, rec.Seq, ErrFull, l.bytes, l.s.opts.MaxBytes)
	}
	if err := l.s.space.admit(size, false); err != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("append journal %s seq=%d: %w", l.name, rec.Seq, err)
	}
	rec.Time = time.Now().UTC()
	rec.Seal(l.headSum)
	w, ri, err := l.reserveLocked(&rec, size)
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	l.write(w, ri, &rec)
	return w.p, nil
}

// reserveLocked gives a sealed record that follows the head its place:
// a segment and offset, a Pending and a slot in the in-flight list. The
// caller must then call write. l.mu held.
func (l *Log) reserveLocked(rec *Record, size int64) (*wentry, recInfo, error) {
	var g *segment
	if n := len(l.segs); n > 0 && l.segs[n-1].end+size <= l.s.opts.SegmentSize {
		g = l.segs[n-1]
	} else {
		ng, err := l.s.newSegment(l.id, rec.Seq)
		if err != nil {
			return nil, recInfo{}, fmt.Errorf("append journal %s seq=%d: %w", l.name, rec.Seq, err)
		}
		g = ng
		l.segs = append(l.segs, g)
	}
	ri := recInfo{seq: rec.Seq, sum: rec.Sum, size: size, off: g.end, seg: g}
	g.end += size
	w := &wentry{seq: rec.Seq, sum: rec.Sum, epoch: l.epoch, p: &Pending{seq: rec.Seq, done: make(chan struct{})}}
	l.inflight = append(l.inflight, w)
	l.head, l.headSum = rec.Seq, rec.Sum
	l.recs = append(l.recs, ri)
	l.bytes += size
	l.writers.Add(1)
	return w, ri, nil
}

// write writes a reserved record into its segment and completes it.
func (l *Log) write(w *wentry, ri recInfo, rec *Record) {
	defer l.writers.Done()
	var hdr [HeaderSize]byte
	rec.putHeader(hdr[:])
	binary.BigEndian.PutUint64(hdr[42:], rec.Sum)
	err := ri.seg.writeRecord(hdr[:], rec.Data, ri.off)
	if err != nil {
		err = fmt.Errorf("append journal %s seq=%d: %w", l.name, rec.Seq, err)
	}
	l.written(w, ri.seg, err)
}

// written records that w's write finished (err nil) or failed. The
// commit point advances over the contiguous prefix of written records,
// completing their Pendings in order; a failure fails w and every record
// after it and rolls the log back to the commit point, so the chain
// never has a gap.
func (l *Log) written(w *wentry, g *segment, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.epoch != l.epoch {
		return // failed already by an earlier record's failure
	}
	if err != nil {
		l.s.log.Error("journal write failed", logKeyLog, l.name, logKeySeq, w.seq, logKeyErr, err)
		l.rollbackLocked(w, err)
		return
	}
	l.s.noteDirty(g)
	w.done = true
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
	for l.commitSeq < target && l.epoch == epoch {
		if l.closed {
			l.mu.Unlock()
			return fmt.Errorf("sync journal %s: %w", l.name, ErrClosed)
		}
		ch := l.notify
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		l.mu.Lock()
	}
	l.mu.Unlock()
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
		if err := r.Verify(prev); err != nil {
			l.mu.Unlock()
			return fmt.Errorf("append received to %s: %w", l.name, err)
		}
		seq, prev = r.Seq, r.Sum
	}
	var total int64
	for i := range recs {
		total += int64(recs[i].EncodedSize())
	}
	if err := l.s.space.admit(total, false); err != nil {
		l.mu.Unlock()
		return fmt.Errorf("append received to %s: %w", l.name, err)
	}
	ws := make([]*wentry, 0, len(recs))
	ris := make([]recInfo, 0, len(recs))
	var rerr error
	for i := range recs {
		w, ri, err := l.reserveLocked(&recs[i], int64(recs[i].EncodedSize()))
		if err != nil {
			rerr = err
			break
		}
		ws = append(ws, w)
		ris = append(ris, ri)
	}
	l.mu.Unlock()
	for i, w := range ws {
		l.write(w, ris[i], &recs[i])
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
	if l.head != l.base {
		l.mu.Unlock()
		return fmt.Errorf("rebase journal %s: %d unreleased records", l.name, l.head-l.base)
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
	for {
		l.mu.Lock()
		if l.commitSeq > seq {
			l.mu.Unlock()
			return nil
		}
		if l.closed {
			l.mu.Unlock()
			return fmt.Errorf("wait journal %s: %w", l.name, ErrClosed)
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
