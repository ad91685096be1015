package journal

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// load reads the base, holds and sync mark from badger, then rebuilds the
// index of the unreleased records by scanning the log's segments from the
// base, verifying the chain. It stops at the first record that is
// missing, torn or corrupt and cuts it and everything after it (the
// segment is truncated there, later segments retired): a cut at or below
// the sync mark is damage (Recovery.Cut, logged at Error), one past it a
// torn tail of writes that never completed (Recovery.Torn, logged at
// Warn).
func (l *Log) load() error {
	if err := l.loadMeta(); err != nil {
		return err
	}
	segs, err := l.s.listSegments(l.id)
	if err != nil {
		return err
	}
	l.head, l.headSum = l.base, l.baseSum
	var retire []*segment
	// Segments wholly at or below the base hold only released records.
	for len(segs) > 1 && segs[1].first <= l.base+1 {
		retire = append(retire, segs[0])
		segs = segs[1:]
	}
	var (
		why     error // why the scan stopped early, nil at a clean end
		stopAt  = -1  // index in segs of the segment cut, -1 for none
		stopOff int64 // where that segment is cut
		lost    int   // records found past the cut
	)
	buf := make([]byte, 0, MaxData+HeaderSize)
	for i, g := range segs {
		if i > 0 && g.first < l.head+1 {
			// A leftover whose records the scan already found in the
			// segment before (never written by this format's appends).
			retire = append(retire, g)
			segs[i] = nil
			continue
		}
		if g.first > l.head+1 {
			why = fmt.Errorf("%w: seq=%d missing: next segment starts at %d", ErrCorrupt, l.head+1, g.first)
			for _, h := range segs[i:] {
				lost += h.countFrom(0, h.first)
			}
			retire = append(retire, segs[i:]...)
			segs = segs[:i]
			break
		}
		off, next := int64(0), g.first
		for {
			seq, size, ok := g.headerAt(off)
			if !ok || seq != next {
				break // the end of the segment's data
			}
			if seq <= l.base { // released, in the segment of the base
				off, next = off+size, next+1
				continue
			}
			buf = buf[:size]
			err := g.readAt(buf, off)
			var rec Record
			if err == nil {
				var n int
				rec, n, err = decodeView(buf)
				if err == nil && int64(n) != size {
					err = fmt.Errorf("%w: record of %d bytes in %d", ErrCorrupt, n, size)
				}
			}
			if err == nil {
				err = rec.Verify(l.headSum)
			}
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrShort) {
					return fmt.Errorf("read journal seq=%d: %w", seq, err)
				}
				why = fmt.Errorf("seq=%d: %w", seq, err)
				break
			}
			l.recs = append(l.recs, recInfo{seq: seq, sum: rec.Sum, size: size, off: off, at: rec.Time.UnixNano(), seg: g})
			l.bytes += size
			l.head, l.headSum = seq, rec.Sum
			off, next = off+size, next+1
		}
		g.end = off
		if why != nil {
			stopAt, stopOff = i, off
			lost += g.countFrom(off, l.head+1)
			for _, h := range segs[i+1:] {
				lost += h.countFrom(0, h.first)
			}
			retire = append(retire, segs[i+1:]...)
			segs = segs[:i+1]
			break
		}
	}
	if why == nil && l.durable > l.head {
		why = fmt.Errorf("%w: seq=%d missing: synced up to %d", ErrCorrupt, l.head+1, l.durable)
	}
	if stopAt >= 0 {
		if err := segs[stopAt].f.Truncate(stopOff); err != nil {
			return fmt.Errorf("cut journal %s at seq=%d: %w", l.name, l.head+1, err)
		}
	}
	for _, g := range retire {
		l.s.retire(g)
	}
	for _, g := range segs {
		if g != nil {
			l.segs = append(l.segs, g)
		}
	}
	l.commitSeq, l.commitSum = l.head, l.headSum
	l.recovery.First, l.recovery.Head = l.base+1, l.head
	if why != nil {
		cutAt := l.head + 1
		if cutAt <= l.durable {
			l.recovery.Cut = max(lost, int(l.durable-l.head))
			l.recovery.CutAt = cutAt
			l.recovery.Err = fmt.Errorf("journal %s: %w", l.name, why)
			l.s.log.Error("journal cut: damaged or missing record", logKeyLog, l.name,
				logKeySeq, cutAt, logKeyCount, l.recovery.Cut, logKeyErr, why)
		} else if lost > 0 {
			l.recovery.Torn = lost
			l.s.log.Warn("journal tail cut: torn write", logKeyLog, l.name,
				logKeySeq, cutAt, logKeyCount, lost, logKeyErr, why)
		}
	}
	if l.durable > l.head {
		// The mark follows the records now on disk: behind after a cut,
		// and (to be safe) nowhere ahead of them.
		l.durable = min(l.durable, l.head)
		if err := l.s.db.Update(func(txn *badger.Txn) error {
			return txn.Set(syncedKey(l.id), u64(l.durable))
		}); err != nil {
			return fmt.Errorf("cut journal %s: %w", l.name, err)
		}
	}
	return nil
}

// loadMeta reads the base, the sync mark and the holds.
func (l *Log) loadMeta() error {
	return l.s.db.View(func(txn *badger.Txn) error {
		get := func(key []byte, n int, fn func(v []byte)) error {
			it, err := txn.Get(key)
			if errors.Is(err, badger.ErrKeyNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			return it.Value(func(v []byte) error {
				if len(v) != n {
					return fmt.Errorf("%w: key %q of %d bytes", ErrCorrupt, key, len(v))
				}
				fn(v)
				return nil
			})
		}
		if err := get(baseKey(l.id), 16, func(v []byte) {
			l.base, l.baseSum = binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
		}); err != nil {
			return err
		}
		if err := get(syncedKey(l.id), 8, func(v []byte) { l.durable = binary.BigEndian.Uint64(v) }); err != nil {
			return err
		}
		hp := subKey(l.id, subHold, nil)
		hit := txn.NewIterator(badger.IteratorOptions{Prefix: hp, PrefetchValues: false})
		defer hit.Close()
		for hit.Rewind(); hit.Valid(); hit.Next() {
			item := hit.Item()
			c := string(item.Key()[len(hp):])
			if err := item.Value(func(v []byte) error {
				if len(v) == 8 {
					l.holds[c] = binary.BigEndian.Uint64(v)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
}
