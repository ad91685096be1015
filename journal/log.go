package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Pending is an appended record on its way to badger.
type Pending struct {
	seq  uint64
	done chan struct{}
	err  error
}

// Seq is the sequence number Append assigned.
func (p *Pending) Seq() uint64 { return p.seq }

// Done is closed once the record is committed or has failed.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait returns once the record is committed to badger, which means it
// survives kill -9 of the process (not a power cut: see Log.Sync), or with
// the reason it never will be. A ctx error means only that the caller
// stopped waiting: the record may still commit.
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Recovery describes what Store.Log found when it opened a log.
type Recovery struct {
	// First and Head bound the unreleased records after recovery
	// (First > Head when there are none).
	First, Head uint64
	// Cut is how many records were dropped as torn or corrupt, from seq
	// CutAt onwards; Err says why. Zero when the chain was intact.
	Cut   int
	CutAt uint64
	Err   error
}

// recInfo is what a log remembers of each unreleased record.
type recInfo struct {
	seq  uint64
	sum  uint64
	size int64
}

// Log is one disk's change log: a dense, hash-chained sequence of
// records. It is safe for concurrent use; appends from all goroutines are
// ordered by the call that assigned their Seq.
type Log struct {
	s    *Store
	name string
	id   uint32

	relMu sync.Mutex // serialises releases

	mu        sync.Mutex
	closed    bool
	epoch     uint64 // bumped when a commit failure rolls the log back
	head      uint64 // last appended seq
	headSum   uint64
	commitSeq uint64 // last committed seq
	commitSum uint64
	base      uint64 // last released seq
	baseSum   uint64
	recs      []recInfo // unreleased appended records, in seq order
	recs0     int       // index of the first live element of recs
	bytes     int64
	holds     map[string]uint64
	notify    chan struct{} // closed and replaced when commitSeq advances
	recovery  Recovery
}

func newLog(s *Store, name string, id uint32) *Log {
	return &Log{s: s, name: name, id: id, holds: make(map[string]uint64), notify: make(chan struct{})}
}

// Name is the log's name.
func (l *Log) Name() string { return l.name }

// Recovery reports what opening the log found.
func (l *Log) Recovery() Recovery {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recovery
}

// Head is the seq of the last appended record (committed or not), 0 for
// a log that never had one.
func (l *Log) Head() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head
}

// Committed is the seq of the last committed record: every record up to
// it is readable with ReadFrom and survives kill -9.
func (l *Log) Committed() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.commitSeq
}

// Base returns the last released seq and its sum: the records after it
// are the log's unreleased records, chained from sum.
func (l *Log) Base() (seq, sum uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.base, l.baseSum
}

// Bytes is the encoded size of the unreleased records, the figure that
// Options.MaxBytes limits.
func (l *Log) Bytes() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bytes
}

func (l *Log) markClosed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.notify)
	}
}

// load reads the base, holds and unreleased records and verifies the
// chain, cutting a torn or corrupt tail.
func (l *Log) load() error {
	var stale, cut [][]byte
	err := l.s.db.View(func(txn *badger.Txn) error {
		if it, err := txn.Get(baseKey(l.id)); err == nil {
			if err := it.Value(func(v []byte) error {
				if len(v) != 16 {
					return fmt.Errorf("%w: base of %d bytes", ErrCorrupt, len(v))
				}
				l.base, l.baseSum = binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
				return nil
			}); err != nil {
				return err
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		hp := subKey(l.id, subHold, nil)
		hit := txn.NewIterator(badger.IteratorOptions{Prefix: hp, PrefetchValues: false})
		for hit.Rewind(); hit.Valid(); hit.Next() {
			item := hit.Item()
			c := string(item.Key()[len(hp):])
			if err := item.Value(func(v []byte) error {
				if len(v) == 8 {
					l.holds[c] = binary.BigEndian.Uint64(v)
				}
				return nil
			}); err != nil {
				hit.Close()
				return err
			}
		}
		hit.Close()

		l.head, l.headSum = l.base, l.baseSum
		rp := subKey(l.id, subRecord, nil)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: rp, PrefetchValues: false})
		defer it.Close()
		prev := l.baseSum
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			seq, ok := recordSeq(item.Key())
			if !ok {
				continue
			}
			if seq <= l.base {
				stale = append(stale, item.KeyCopy(nil))
				continue
			}
			if l.recovery.Err != nil {
				cut = append(cut, item.KeyCopy(nil))
				continue
			}
			var rec Record
			var size int
			err := item.Value(func(v []byte) error {
				var err error
				rec, size, err = DecodeRecord(v)
				if err == nil && size != len(v) {
					err = fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(v)-size)
				}
				return err
			})
			if err == nil && rec.Seq != seq {
				err = fmt.Errorf("%w: key seq %d holds record seq %d", ErrCorrupt, seq, rec.Seq)
			}
			if err == nil && seq != l.head+1 {
				err = fmt.Errorf("%w: seq %d follows %d", ErrCorrupt, seq, l.head)
			}
			if err == nil {
				err = rec.Verify(prev)
			}
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrShort) {
					return fmt.Errorf("read journal seq=%d: %w", seq, err)
				}
				l.recovery.Err = fmt.Errorf("journal %s seq=%d: %w", l.name, seq, err)
				l.recovery.CutAt = seq
				cut = append(cut, item.KeyCopy(nil))
				continue
			}
			prev = rec.Sum
			l.head, l.headSum = seq, rec.Sum
			l.recs = append(l.recs, recInfo{seq: seq, sum: rec.Sum, size: int64(size)})
			l.bytes += int64(size)
		}
		return nil
	})
	if err != nil {
		return err
	}
	l.commitSeq, l.commitSum = l.head, l.headSum
	l.recovery.First, l.recovery.Head = l.base+1, l.head
	l.recovery.Cut = len(cut)
	if len(cut) > 0 {
		l.s.log.Error("journal tail cut: torn or corrupt record", logKeyLog, l.name,
			logKeySeq, l.recovery.CutAt, logKeyCount, len(cut), logKeyErr, l.recovery.Err)
	}
	if err := l.s.deleteKeys(append(stale, cut...)); err != nil {
		return fmt.Errorf("cut journal tail: %w", err)
	}
	return nil
}

// Append assigns rec the next Seq, the current Time, PrevSum and Sum and
// queues it for the group committer. It returns at once; Wait on the
// Pending for the commit. rec.Data is copied: the caller may reuse it.
// Seqs are dense and follow the order of Append calls. It fails with an
// error wrapping ErrFull, without appending, when the record would take
// the log past Options.MaxBytes.
func (l *Log) Append(ctx context.Context, rec Record) (*Pending, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	size := int64(rec.EncodedSize())
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("append journal %s: %w", l.name, ErrClosed)
	}
	rec.Seq = l.head + 1
	if err := rec.Validate(); err != nil {
		return nil, fmt.Errorf("append journal %s: %w", l.name, err)
	}
	if l.bytes+size > l.s.opts.MaxBytes {
		return nil, fmt.Errorf("append journal %s seq=%d: %w (%d of %d bytes)", l.name, rec.Seq, ErrFull, l.bytes, l.s.opts.MaxBytes)
	}
	if err := l.s.space.admit(size, false); err != nil {
		return nil, fmt.Errorf("append journal %s seq=%d: %w", l.name, rec.Seq, err)
	}
	rec.Time = time.Now().UTC()
	rec.Seal(l.headSum)
	return l.enqueueLocked(&rec, size)
}

// enqueueLocked queues a sealed record that follows the head. l.mu held.
func (l *Log) enqueueLocked(rec *Record, size int64) (*Pending, error) {
	val, err := rec.AppendBinary(getBuf(int(size)))
	if err != nil {
		return nil, fmt.Errorf("append journal %s seq=%d: %w", l.name, rec.Seq, err)
	}
	p := &Pending{seq: rec.Seq, done: make(chan struct{})}
	e := &entry{l: l, epoch: l.epoch, seq: rec.Seq, sum: rec.Sum, key: recordKey(l.id, rec.Seq), val: val, p: p}
	if err := l.s.enqueue(e); err != nil {
		return nil, fmt.Errorf("append journal %s seq=%d: %w", l.name, rec.Seq, err)
	}
	l.head, l.headSum = rec.Seq, rec.Sum
	l.recs = append(l.recs, recInfo{seq: rec.Seq, sum: rec.Sum, size: size})
	l.bytes += size
	return p, nil
}

// current reports whether e belongs to the log's current epoch.
func (l *Log) current(e *entry) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return e.epoch == l.epoch && !l.closed
}

// committed records that e is in badger and completes its Pending.
func (l *Log) committed(e *entry) {
	l.mu.Lock()
	if e.seq > l.commitSeq {
		l.commitSeq, l.commitSum = e.seq, e.sum
		if !l.closed {
			close(l.notify)
			l.notify = make(chan struct{})
		}
	}
	l.mu.Unlock()
	putBuf(e.val)
	e.val = nil
	close(e.p.done)
}

// fail completes e's Pending with err (ErrAborted when nil) and, the
// first time its epoch fails, rolls the log back to its last committed
// record so that later appends chain from there.
func (l *Log) fail(e *entry, err error) {
	l.mu.Lock()
	if e.epoch == l.epoch {
		l.epoch++
		l.head, l.headSum = l.commitSeq, l.commitSum
		for n := len(l.recs); n > l.recs0 && l.recs[n-1].seq > l.commitSeq; n-- {
			l.bytes -= l.recs[n-1].size
			l.recs = l.recs[:n-1]
		}
	}
	closed := l.closed
	l.mu.Unlock()
	switch {
	case err != nil:
	case closed:
		err = fmt.Errorf("append journal %s seq=%d: %w", l.name, e.seq, ErrClosed)
	default:
		err = fmt.Errorf("append journal %s seq=%d: %w", l.name, e.seq, ErrAborted)
	}
	e.p.err = err
	putBuf(e.val)
	e.val = nil
	close(e.p.done)
}

// Sync returns once every record appended before the call is committed
// and synced: it survives a power cut. Concurrent Syncs share one badger
// Sync. It does not report the failure of individual records: their
// Pending does.
func (l *Log) Sync(ctx context.Context) error {
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
	pending := make([]*Pending, 0, len(recs))
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
	for i := range recs {
		p, err := l.enqueueLocked(&recs[i], int64(recs[i].EncodedSize()))
		if err != nil {
			l.mu.Unlock()
			return fmt.Errorf("append received: %w", err)
		}
		pending = append(pending, p)
	}
	l.mu.Unlock()
	for _, p := range pending {
		if err := p.Wait(ctx); err != nil {
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
	if err := l.s.db.Update(func(txn *badger.Txn) error { return txn.Set(baseKey(l.id), v) }); err != nil {
		return fmt.Errorf("rebase journal %s: %w", l.name, err)
	}
	l.mu.Lock()
	l.base, l.baseSum = seq, sum
	l.head, l.headSum = seq, sum
	l.commitSeq, l.commitSum = seq, sum
	l.mu.Unlock()
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
