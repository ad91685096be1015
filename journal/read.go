package journal

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// ReadFrom calls fn with every committed record from seq from onwards, in
// order, reading them from their segments and verifying the chain as it
// goes. It stops at the first damaged, missing or misplaced record with
// an error wrapping ErrCorrupt that names its seq; that record is never
// passed to fn. It returns fn's error as is and an error wrapping
// ErrReleased when from was already released. from 0 means the first
// unreleased record. fn owns the Record it gets.
//
// ReadFrom reads a consistent snapshot: the records committed when it
// started, even if they are released meanwhile; records committed after
// it started are not included.
func (l *Log) ReadFrom(ctx context.Context, from uint64, fn func(Record) error) error {
	return l.ReadViews(ctx, from, func(rec Record) error {
		if len(rec.Data) > 0 {
			rec.Data = append([]byte(nil), rec.Data...) // fn owns it
		}
		return fn(rec)
	})
}

// viewChunk bounds one read of ReadViews, and so its buffer.
const viewChunk = 4 << 20

// ReadViews is ReadFrom without its copies, for a reader that only passes
// the records on (the replication sender): after the first record (read
// alone, for readers that want just one), records that lie back to back
// in a segment are read with one pread into a buffer ReadViews reuses,
// each is verified against the chain, and fn gets a Record whose Data
// aliases that buffer: fn may keep neither after it returns. Errors are
// ReadFrom's.
func (l *Log) ReadViews(ctx context.Context, from uint64, fn func(Record) error) error {
	bp, _ := l.s.views.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer l.s.views.Put(bp)
	return l.views(ctx, from, func() int64 { return viewChunk }, func(size int64) []byte {
		if int64(cap(*bp)) < size {
			*bp = make([]byte, size)
		}
		return (*bp)[:size]
	}, fn)
}

// AppendViews is ReadViews reading into the end of buf instead of a
// buffer of its own, for a reader that sends the records on in their
// stored form, which is Record.AppendBinary's (the replication sender
// builds its frames so, with one copy of the data where ReadViews and
// AppendBinary made two). fn gets each record, a view into buf, once its
// bytes are there; the record stays in buf when fn returns nil. Reading
// stops after the record that takes buf to limit bytes or more. It
// returns buf with the records fn accepted, and nil or the error that
// stopped it: fn's as is (its record is not in buf), or ReadFrom's.
func (l *Log) AppendViews(ctx context.Context, from uint64, buf []byte, limit int, fn func(Record) error) ([]byte, error) {
	kept := len(buf)
	if kept >= limit {
		return buf, nil
	}
	err := l.views(ctx, from, func() int64 { return min(viewChunk, int64(limit-kept)) }, func(size int64) []byte {
		buf = slices.Grow(buf[:kept], int(size))[:kept+int(size)]
		return buf[kept:]
	}, func(r Record) error {
		if err := fn(r); err != nil {
			return err
		}
		kept += HeaderSize + len(r.Data)
		if kept >= limit {
			return errViewsFull
		}
		return nil
	})
	if errors.Is(err, errViewsFull) {
		err = nil
	}
	return buf[:kept], err
}

// errViewsFull stops AppendViews's reading at its limit.
var errViewsFull = errors.New("views reached their limit")

// views reads the committed records from seq from onwards for ReadViews
// and AppendViews: after the first record, records back to back in a
// segment are read as one run of at most budget() bytes (at least one
// record) into room(size), and each is verified and passed to fn.
func (l *Log) views(ctx context.Context, from uint64, budget func() int64, room func(size int64) []byte, fn func(Record) error) error {
	snap, prev, pinned, err := l.snapshot(from)
	if err != nil || len(snap) == 0 {
		return err
	}
	defer l.unpin(pinned)

	single := false // after a failed run: read its records one by one
	for i := 0; i < len(snap); {
		if err := ctx.Err(); err != nil {
			return err
		}
		// The run: records back to back in one segment, one read.
		j, size, most := i+1, snap[i].size, budget()
		for !single && i > 0 && j < len(snap) && snap[j].seg == snap[i].seg && snap[j].off == snap[j-1].off+snap[j-1].size &&
			size+snap[j].size <= most {
			size += snap[j].size
			j++
		}
		p := room(size)
		if err := snap[i].seg.readAt(p, snap[i].off); err != nil {
			if j > i+1 {
				single = true // name the first record that cannot be read
				continue
			}
			if errors.Is(err, ErrShort) {
				err = fmt.Errorf("%w: %w", ErrCorrupt, err)
			}
			return fmt.Errorf("read journal %s seq=%d: %w", l.name, snap[i].seq, err)
		}
		for _, ri := range snap[i:j] {
			rec, err := viewRecord(ri, p[:ri.size])
			if err == nil {
				err = rec.Verify(prev)
			}
			if err != nil {
				return fmt.Errorf("read journal %s seq=%d: %w", l.name, ri.seq, err)
			}
			if err := fn(rec); err != nil {
				return err
			}
			prev = rec.Sum
			p = p[ri.size:]
		}
		i = j
	}
	return nil
}

// snapshot returns the committed records from seq from onwards (none when
// from is past the commit point), the sum they follow, and their segments
// pinned: the caller unpins them.
func (l *Log) snapshot(from uint64) (snap []recInfo, prev uint64, pinned []*segment, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, 0, nil, fmt.Errorf("read journal %s: %w", l.name, ErrClosed)
	}
	base, baseSum := l.base, l.baseSum
	if from == 0 {
		from = base + 1
	}
	if from <= base {
		return nil, 0, nil, fmt.Errorf("read journal %s from %d: %w (released up to %d)", l.name, from, ErrReleased, base)
	}
	if from > l.commitSeq {
		return nil, 0, nil, nil // nothing at or after from yet
	}
	// The slice of committed records never changes in place: releases
	// move recs0, appends and rollbacks touch only what follows commitSeq.
	i0 := l.recs0 + int(from-base-1)
	i1 := l.recs0 + int(l.commitSeq-base)
	snap = l.recs[i0:i1:i1]
	prev = baseSum
	if i0 > l.recs0 {
		prev = l.recs[i0-1].sum
	}
	return snap, prev, l.pinLocked(snap[0].seg), nil
}

// viewRecord decodes the record ri describes from its stored bytes b
// (ri.size of them); the returned Data aliases b.
func viewRecord(ri recInfo, b []byte) (Record, error) {
	rec, n, err := decodeView(b)
	if errors.Is(err, ErrShort) {
		return Record{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if err != nil {
		return Record{}, err
	}
	if int64(n) != ri.size {
		return Record{}, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, ri.size-int64(n))
	}
	if rec.Seq != ri.seq {
		return Record{}, fmt.Errorf("%w: holds record seq %d", ErrCorrupt, rec.Seq)
	}
	return rec, nil
}

// Tamper rewrites the stored bytes of committed record seq with fn's
// result, in place in its segment (a shorter result is padded with zeros,
// as a torn write leaves it; a longer one is refused). It exists for fault-injection tests
// and repair tools, which use it to corrupt or truncate a record; the
// appliance never calls it.
func (l *Log) Tamper(seq uint64, fn func(stored []byte) []byte) error {
	l.mu.Lock()
	if seq <= l.base || seq > l.commitSeq {
		l.mu.Unlock()
		return fmt.Errorf("tamper journal %s seq=%d: %w", l.name, seq, ErrNotFound)
	}
	ri := l.recs[l.recs0+int(seq-l.base-1)]
	pinned := l.pinLocked(ri.seg)
	l.mu.Unlock()
	defer l.unpin(pinned)
	b := make([]byte, ri.size)
	if err := ri.seg.readAt(b, ri.off); err != nil {
		return fmt.Errorf("tamper journal %s seq=%d: %w", l.name, seq, err)
	}
	nb := fn(b)
	if int64(len(nb)) > ri.size {
		return fmt.Errorf("tamper journal %s seq=%d: %d bytes do not fit in %d", l.name, seq, len(nb), ri.size)
	}
	nb = append(nb, make([]byte, ri.size-int64(len(nb)))...)
	if _, err := ri.seg.f.WriteAt(nb, ri.off); err != nil {
		return fmt.Errorf("tamper journal %s seq=%d: %w", l.name, seq, err)
	}
	return nil
}
