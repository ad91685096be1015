package journal

import (
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// ReadFrom calls fn with every committed record from seq from onwards, in
// order, verifying the chain as it goes. It stops at the first damaged,
// missing or misplaced record with an error wrapping ErrCorrupt that names
// its seq; that record is never passed to fn. It returns fn's error as is
// and an error wrapping ErrReleased when from was already released. from
// 0 means the first unreleased record. fn owns the Record it gets.
//
// ReadFrom reads a consistent snapshot: records committed after it
// started may or may not be included.
func (l *Log) ReadFrom(ctx context.Context, from uint64, fn func(Record) error) error {
	txn := l.s.db.NewTransaction(false)
	defer txn.Discard()
	l.mu.Lock()
	base, baseSum, closed := l.base, l.baseSum, l.closed
	l.mu.Unlock()
	if closed {
		return fmt.Errorf("read journal %s: %w", l.name, ErrClosed)
	}
	if from == 0 {
		from = base + 1
	}
	if from <= base {
		return fmt.Errorf("read journal %s from %d: %w (released up to %d)", l.name, from, ErrReleased, base)
	}
	prev := baseSum
	if from > base+1 {
		r, err := l.get(txn, from-1)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil // nothing at or after from yet
		}
		if err != nil {
			return err
		}
		if err := r.Verify(r.PrevSum); err != nil {
			return fmt.Errorf("read journal %s: %w", l.name, err)
		}
		prev = r.Sum
	}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: subKey(l.id, subRecord, nil)})
	defer it.Close()
	want := from
	for it.Seek(recordKey(l.id, from)); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		item := it.Item()
		seq, ok := recordSeq(item.Key())
		if !ok {
			continue
		}
		if seq != want {
			return fmt.Errorf("read journal %s: %w: seq=%d missing (found %d)", l.name, ErrCorrupt, want, seq)
		}
		var rec Record
		err := item.Value(func(v []byte) error {
			var err error
			var n int
			rec, n, err = DecodeRecord(v)
			if err == nil && n != len(v) {
				err = fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(v)-n)
			}
			return err
		})
		if err == nil && rec.Seq != seq {
			err = fmt.Errorf("%w: key seq %d holds record seq %d", ErrCorrupt, seq, rec.Seq)
		}
		if err == nil {
			err = rec.Verify(prev)
		}
		if err != nil {
			if errors.Is(err, ErrShort) {
				err = fmt.Errorf("%w: seq=%d: %w", ErrCorrupt, seq, err)
			}
			return fmt.Errorf("read journal %s seq=%d: %w", l.name, seq, err)
		}
		if err := fn(rec); err != nil {
			return err
		}
		prev = rec.Sum
		want++
	}
	return nil
}

// get reads and decodes record seq.
func (l *Log) get(txn *badger.Txn, seq uint64) (Record, error) {
	item, err := txn.Get(recordKey(l.id, seq))
	if err != nil {
		return Record{}, err
	}
	var rec Record
	err = item.Value(func(v []byte) error {
		var err error
		rec, _, err = DecodeRecord(v)
		return err
	})
	if err != nil {
		return Record{}, fmt.Errorf("read journal %s seq=%d: %w", l.name, seq, err)
	}
	return rec, nil
}

// Tamper rewrites the stored bytes of record seq with fn's result. It
// exists for fault-injection tests and repair tools, which use it to
// corrupt or truncate a record; the appliance never calls it.
func (l *Log) Tamper(seq uint64, fn func(stored []byte) []byte) error {
	err := l.s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(recordKey(l.id, seq))
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		return txn.Set(recordKey(l.id, seq), fn(v))
	})
	if err != nil {
		return fmt.Errorf("tamper journal %s seq=%d: %w", l.name, seq, err)
	}
	return nil
}
