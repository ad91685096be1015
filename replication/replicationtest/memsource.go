package replicationtest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replication"
)

// BlockSize is the granularity of MemSource's allocation and dirty maps.
const BlockSize = 64 << 10

// MemSource is an in-memory disk with a journal: Write and Zero journal a
// record and then change the store. Records are kept until acknowledged,
// up to Limit bytes of data; beyond it the oldest are dropped and their
// ranges marked dirty, as the daemon's journal does on overflow.
type MemSource struct {
	mu        sync.Mutex
	data      []byte
	recs      []journal.Record // kept, in order
	keptBytes int64
	limit     int64
	head      replication.Position
	acked     uint64
	dirty     map[int64]uint64 // block → newest seq of a dropped record in it
	allocated map[int64]bool
	changed   chan struct{}
	dropped   int
}

var _ replication.Source = (*MemSource)(nil)
var _ replication.Backlogger = (*MemSource)(nil)

// NewMemSource returns a zeroed disk of size bytes whose journal keeps up
// to limit bytes of unacknowledged data (0: unlimited).
func NewMemSource(size, limit int64) *MemSource {
	return &MemSource{data: make([]byte, size), limit: limit, dirty: map[int64]uint64{},
		allocated: map[int64]bool{}, changed: make(chan struct{})}
}

// Write journals p at off and writes it to the store, returning its seq.
func (m *MemSource) Write(off int64, p []byte) uint64 {
	return m.apply(journal.Record{Kind: journal.KindWrite, Off: off, Len: int64(len(p)), Data: append([]byte(nil), p...)})
}

// Zero journals a zero record and zeroes the range.
func (m *MemSource) Zero(off, length int64) uint64 {
	return m.apply(journal.Record{Kind: journal.KindZero, Off: off, Len: length})
}

// Marker journals a marker record.
func (m *MemSource) Marker(label string) uint64 {
	return m.apply(journal.Record{Kind: journal.KindMarker, Data: []byte(label)})
}

func (m *MemSource) apply(r journal.Record) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	r.Seq = m.head.Seq + 1
	r.Time = time.Now().UTC()
	r.Seal(m.head.Sum)
	m.recs = append(m.recs, r)
	m.keptBytes += int64(len(r.Data)) + journal.HeaderSize
	m.head = replication.Position{Seq: r.Seq, Sum: r.Sum}
	for m.limit > 0 && m.keptBytes > m.limit && len(m.recs) > 1 {
		m.dropLocked()
	}
	switch r.Kind {
	case journal.KindWrite:
		copy(m.data[r.Off:], r.Data)
	case journal.KindZero, journal.KindTrim:
		clear(m.data[r.Off : r.Off+r.Len])
	}
	if r.Kind != journal.KindMarker {
		for b := r.Off / BlockSize; b*BlockSize < r.Off+r.Len; b++ {
			m.allocated[b] = true
		}
	}
	close(m.changed)
	m.changed = make(chan struct{})
	return r.Seq
}

// dropLocked drops the oldest kept record, marking its range dirty unless
// it is already acknowledged.
func (m *MemSource) dropLocked() {
	r := m.recs[0]
	m.recs = m.recs[1:]
	m.keptBytes -= int64(len(r.Data)) + journal.HeaderSize
	if r.Seq <= m.acked || r.Kind == journal.KindMarker {
		return
	}
	m.dropped++
	for b := r.Off / BlockSize; b*BlockSize < r.Off+r.Len; b++ {
		m.dirty[b] = max(m.dirty[b], r.Seq)
	}
}

// Size is the disk's size.
func (m *MemSource) Size() int64 { return int64(len(m.data)) }

// Head is the newest record.
func (m *MemSource) Head(ctx context.Context) (replication.Position, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.head, nil
}

// ReadFrom calls fn for the kept records from seq from.
func (m *MemSource) ReadFrom(ctx context.Context, from uint64, fn func(journal.Record) error) error {
	m.mu.Lock()
	if from > m.head.Seq {
		m.mu.Unlock()
		return nil
	}
	if len(m.recs) == 0 || from < m.recs[0].Seq {
		m.mu.Unlock()
		return fmt.Errorf("read from seq=%d: %w", from, replication.ErrTruncated)
	}
	recs := m.recs[from-m.recs[0].Seq:]
	m.mu.Unlock()
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// WaitAfter waits for the head to pass seq.
func (m *MemSource) WaitAfter(ctx context.Context, seq uint64) error {
	for {
		m.mu.Lock()
		if m.head.Seq > seq {
			m.mu.Unlock()
			return nil
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Acked releases records and dirty marks through seq.
func (m *MemSource) Acked(ctx context.Context, seq uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if seq < m.acked {
		return fmt.Errorf("acked seq=%d after seq=%d", seq, m.acked)
	}
	m.acked = seq
	n := 0
	for n < len(m.recs) && m.recs[n].Seq <= seq {
		m.keptBytes -= int64(len(m.recs[n].Data)) + journal.HeaderSize
		n++
	}
	m.recs = m.recs[n:]
	for b, s := range m.dirty {
		if s <= seq {
			delete(m.dirty, b)
		}
	}
	return nil
}

// StartSync plans a sync: all allocated blocks, or the dirty blocks plus
// the kept records after `after`.
func (m *MemSource) StartSync(ctx context.Context, full bool, after uint64) (replication.SyncPlan, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	plan := replication.SyncPlan{Base: m.head}
	if full {
		for b := range m.allocated {
			plan.Regions = append(plan.Regions, replication.Region{Off: b * BlockSize, Len: BlockSize})
		}
		return plan, nil
	}
	for b := range m.dirty {
		plan.Regions = append(plan.Regions, replication.Region{Off: b * BlockSize, Len: BlockSize})
	}
	for _, r := range m.recs {
		if r.Seq > after && r.Kind != journal.KindMarker {
			plan.Regions = append(plan.Regions, replication.Region{Off: r.Off, Len: r.Len})
		}
	}
	return plan, nil
}

// ReadAt reads the store.
func (m *MemSource) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("read off=%d len=%d outside %d bytes", off, len(p), len(m.data))
	}
	return copy(p, m.data[off:]), nil
}

// Backlog counts the kept records after seq and their data bytes.
func (m *MemSource) Backlog(ctx context.Context, after uint64) (records, bytes uint64, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.recs {
		if r.Seq > after {
			records++
			bytes += uint64(len(r.Data))
		}
	}
	return records, bytes, nil
}

// Snapshot returns a copy of the store and the head it reflects.
func (m *MemSource) Snapshot() ([]byte, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...), m.head.Seq
}

// Dropped counts records dropped unacknowledged (overflows).
func (m *MemSource) Dropped() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropped
}

// Acknowledged is the last seq passed to Acked.
func (m *MemSource) Acknowledged() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.acked
}

// Kept is the number of records kept.
func (m *MemSource) Kept() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}
