package journal

import (
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// SetHold records, durably, that consumer (for example "apply" or
// "replication") no longer needs records up to and including seq, and
// releases (deletes) every record at or below the lowest hold. A log
// without holds releases nothing. A hold at or below the released base
// keeps nothing back; seq may not pass the head.
func (l *Log) SetHold(consumer string, seq uint64) error {
	if consumer == "" {
		return fmt.Errorf("set hold on %s: empty consumer", l.name)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("set hold %s on %s: %w", consumer, l.name, ErrClosed)
	}
	if seq > l.head {
		head := l.head
		l.mu.Unlock()
		return fmt.Errorf("set hold %s on %s: seq %d past head %d", consumer, l.name, seq, head)
	}
	l.mu.Unlock()
	if err := l.s.admit(64, true); err != nil {
		return fmt.Errorf("set hold %s=%d on %s: %w", consumer, seq, l.name, err)
	}
	if err := l.s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(holdKey(l.id, consumer), u64(seq))
	}); err != nil {
		return fmt.Errorf("set hold %s=%d on %s: %w", consumer, seq, l.name, err)
	}
	l.s.metaDirty.Store(true)
	l.mu.Lock()
	l.holds[consumer] = seq
	upTo := l.minHoldLocked()
	l.mu.Unlock()
	return l.release(upTo)
}

// RemoveHold forgets consumer's hold, which may release records.
func (l *Log) RemoveHold(consumer string) error {
	if err := l.s.db.Update(func(txn *badger.Txn) error {
		return txn.Delete(holdKey(l.id, consumer))
	}); err != nil {
		return fmt.Errorf("remove hold %s on %s: %w", consumer, l.name, err)
	}
	l.s.metaDirty.Store(true)
	l.mu.Lock()
	delete(l.holds, consumer)
	upTo := l.minHoldLocked()
	l.mu.Unlock()
	return l.release(upTo)
}

// Holds returns a copy of the log's holds.
func (l *Log) Holds() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[string]uint64, len(l.holds))
	for k, v := range l.holds {
		m[k] = v
	}
	return m
}

func (l *Log) minHoldLocked() uint64 {
	first := true
	var m uint64
	for _, v := range l.holds {
		if first || v < m {
			m, first = v, false
		}
	}
	return m
}

// release releases the committed records up to upTo. The new base is
// persisted first; then every segment holding only released records is
// retired (into the free pool, or deleted). A crash in between leaves
// such segments behind, and the next open retires them.
func (l *Log) release(upTo uint64) error {
	l.relMu.Lock()
	defer l.relMu.Unlock()
	l.mu.Lock()
	upTo = min(upTo, l.commitSeq)
	if upTo <= l.base {
		l.mu.Unlock()
		return nil
	}
	idx := l.recs0 + int(upTo-l.base) - 1
	if idx >= len(l.recs) || l.recs[idx].seq != upTo {
		l.mu.Unlock()
		return fmt.Errorf("release journal %s to %d: record bookkeeping out of step", l.name, upTo)
	}
	sum := l.recs[idx].sum
	l.mu.Unlock()

	v := append(u64(upTo), u64(sum)...)
	if err := l.s.db.Update(func(txn *badger.Txn) error { return txn.Set(baseKey(l.id), v) }); err != nil {
		return fmt.Errorf("release journal %s to %d: %w", l.name, upTo, err)
	}
	l.s.metaDirty.Store(true)
	l.mu.Lock()
	l.base, l.baseSum = upTo, sum
	var freed int64
	for l.recs0 <= idx {
		freed += l.recs[l.recs0].size
		l.recs0++
	}
	l.bytes -= freed
	if l.recs0 > len(l.recs)/2 && l.recs0 > 1024 {
		l.recs = append(l.recs[:0:0], l.recs[l.recs0:]...)
		l.recs0 = 0
	}
	// A segment is released when the next one starts at or before the
	// first unreleased seq; the last segment stays, it is written next.
	n := 0
	for n+1 < len(l.segs) && l.segs[n+1].first <= upTo+1 {
		n++
	}
	retire := dropSegmentsLocked(l.segs[:n])
	l.segs = append(l.segs[:0:0], l.segs[n:]...)
	l.mu.Unlock()
	for _, g := range retire {
		l.s.retire(g)
	}
	return nil
}

// SetMeta stores a small value under key in the log's metadata (the
// appliance keeps a disk's role and state there). It is durable once the
// journal is next synced.
func (l *Log) SetMeta(key string, val []byte) error {
	if err := l.s.admit(int64(len(key)+len(val)+64), true); err != nil {
		return fmt.Errorf("set meta %s on %s: %w", key, l.name, err)
	}
	if err := l.s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(metaKey(l.id, key), append([]byte(nil), val...))
	}); err != nil {
		return fmt.Errorf("set meta %s on %s: %w", key, l.name, err)
	}
	l.s.metaDirty.Store(true)
	return nil
}

// Admit asks the journal's space guard for n bytes that the caller is
// about to write outside the journal, on the same file system (a
// replica's staging file): they are refused, with an error wrapping
// syscall.ENOSPC, when they would eat into the space kept free (see
// Options.MinFreeBytes), as the journal's own writes are.
func (l *Log) Admit(n int64) error {
	if err := l.s.admit(n, false); err != nil {
		return fmt.Errorf("%s: %w", l.name, err)
	}
	return nil
}

// SyncMeta makes the metadata set before the call durable, without
// syncing any segment: cheaper than Sync when only metadata must survive
// a power cut.
func (l *Log) SyncMeta(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.s.db.Sync(); err != nil {
		return fmt.Errorf("sync meta of %s: %w", l.name, err)
	}
	return nil
}

// Meta returns the value stored under key, or an error wrapping
// ErrNotFound.
func (l *Log) Meta(key string) ([]byte, error) {
	var v []byte
	err := l.s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(metaKey(l.id, key))
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("meta %s on %s: %w", key, l.name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("meta %s on %s: %w", key, l.name, err)
	}
	return v, nil
}

// DeleteMeta removes key from the log's metadata.
func (l *Log) DeleteMeta(key string) error {
	if err := l.s.db.Update(func(txn *badger.Txn) error {
		return txn.Delete(metaKey(l.id, key))
	}); err != nil {
		return fmt.Errorf("delete meta %s on %s: %w", key, l.name, err)
	}
	l.s.metaDirty.Store(true)
	return nil
}

// MetaPrefix returns every metadata value whose key starts with prefix,
// keyed by the rest of the key.
func (l *Log) MetaPrefix(prefix string) (map[string][]byte, error) {
	out := make(map[string][]byte)
	p := metaKey(l.id, prefix)
	err := l.s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out[string(it.Item().Key()[len(p):])] = v
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("meta %s* on %s: %w", prefix, l.name, err)
	}
	return out, nil
}
