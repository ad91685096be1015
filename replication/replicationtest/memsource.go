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

// Overflow says what a MemSource does when its journal is full.
type Overflow int

const (
	// DropOldest drops the oldest unacknowledged records and marks their
	// ranges dirty; ReadFrom of a dropped seq fails with ErrTruncated.
	DropOldest Overflow = iota
	// StopJournaling stops journaling, as the daemon's tap does: writes
	// go to the store and mark their ranges dirty until StartSync resumes
	// journaling.
	StopJournaling
)

// MemSource is an in-memory disk with a journal: Write and Zero journal a
// record and then change the store. Records are kept until acknowledged,
// up to Limit bytes of data; beyond it the source overflows (see
// Overflow) into dirty-region tracking.
type MemSource struct {
	mu        sync.Mutex
	mode      Overflow
	data      []byte
	recs      []journal.Record // kept, in order
	keptBytes int64
	limit     int64
	head      replication.Position
	acked     uint64
	ackedSum  uint64
	holdAcks  bool                // acknowledgements release nothing (HoldAcks)
	stopped   bool                // StopJournaling: not journaling
	gen       uint64              // dirty mark generation
	dirty     map[int64]dirtyMark // block → mark
	commits   int                 // SyncCommitted calls
	allocated map[int64]bool
	changed   chan struct{}
	overflows int
}

// dirtyMark is why a block is dirty: a dropped record (seq) or an
// unjournaled write (seq 0), and when (gen).
type dirtyMark struct{ seq, gen uint64 }

var _ replication.Source = (*MemSource)(nil)
var _ replication.Backlogger = (*MemSource)(nil)
var _ replication.Reconciler = (*MemSource)(nil)

// NewMemSource returns a zeroed disk of size bytes whose journal keeps up
// to limit bytes of unacknowledged records (0: unlimited) and overflows
// by DropOldest.
func NewMemSource(size, limit int64) *MemSource {
	return &MemSource{data: make([]byte, size), limit: limit, dirty: map[int64]dirtyMark{},
		allocated: map[int64]bool{}, changed: make(chan struct{})}
}

// SetOverflow sets the overflow behaviour.
func (m *MemSource) SetOverflow(o Overflow) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mode = o
}

// Write journals p at off and writes it to the store, returning its seq
// (0 when the write was not journaled).
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
	size := int64(len(r.Data)) + journal.HeaderSize
	if m.mode == StopJournaling && !m.stopped && m.limit > 0 && m.keptBytes+size > m.limit {
		m.stopped = true
		m.overflows++
	}
	if m.stopped {
		m.gen++
		m.markLocked(r.Off, r.Len, dirtyMark{gen: m.gen})
	} else {
		r.Seq = m.head.Seq + 1
		r.Time = time.Now().UTC()
		r.Seal(m.head.Sum)
		m.recs = append(m.recs, r)
		m.keptBytes += size
		m.head = replication.Position{Seq: r.Seq, Sum: r.Sum}
		for m.mode == DropOldest && m.limit > 0 && m.keptBytes > m.limit && len(m.recs) > 1 {
			m.dropLocked()
		}
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

func (m *MemSource) markLocked(off, length int64, mk dirtyMark) {
	for b := off / BlockSize; b*BlockSize < off+length; b++ {
		old := m.dirty[b]
		m.dirty[b] = dirtyMark{seq: max(old.seq, mk.seq), gen: max(old.gen, mk.gen)}
	}
}

// dropLocked drops the oldest kept record, marking its range dirty.
func (m *MemSource) dropLocked() {
	r := m.recs[0]
	m.recs = m.recs[1:]
	m.keptBytes -= int64(len(r.Data)) + journal.HeaderSize
	if r.Kind == journal.KindMarker {
		return
	}
	m.overflows++
	m.gen++
	m.markLocked(r.Off, r.Len, dirtyMark{seq: r.Seq, gen: m.gen})
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
		// As a journal does, a damaged record stops the reading.
		if err := r.Verify(r.PrevSum); err != nil {
			return fmt.Errorf("read seq=%d: %w", r.Seq, err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// NeedsResync reports dirty marks not yet cleared.
func (m *MemSource) NeedsResync() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.dirty) > 0 || m.stopped
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

// Acked releases records through seq and clears the dirty marks of
// dropped records through seq (the secondary holds those writes).
func (m *MemSource) Acked(ctx context.Context, seq uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holdAcks {
		return nil
	}
	if seq < m.acked {
		return fmt.Errorf("acked seq=%d after seq=%d", seq, m.acked)
	}
	m.acked = seq
	n := 0
	for n < len(m.recs) && m.recs[n].Seq <= seq {
		if m.recs[n].Seq == seq {
			m.ackedSum = m.recs[n].Sum
		}
		m.keptBytes -= int64(len(m.recs[n].Data)) + journal.HeaderSize
		n++
	}
	m.recs = m.recs[n:]
	for b, mk := range m.dirty {
		if mk.seq != 0 && mk.seq <= seq {
			delete(m.dirty, b)
		}
	}
	return nil
}

// SyncCommitted clears the dirty marks the plan covered.
func (m *MemSource) SyncCommitted(ctx context.Context, p replication.SyncPlan) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.commits++
	for b, mk := range m.dirty {
		if mk.gen <= p.Gen {
			delete(m.dirty, b)
		}
	}
	return nil
}

// SyncCommits counts SyncCommitted calls.
func (m *MemSource) SyncCommits() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.commits
}

// StartSync resumes journaling and plans a sync: all allocated blocks, or
// the dirty blocks plus the kept records after `after`.
func (m *MemSource) StartSync(ctx context.Context, full bool, after uint64) (replication.SyncPlan, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopped = false
	p := replication.SyncPlan{Base: m.head, Gen: m.gen}
	if full {
		for b := range m.allocated {
			p.Regions = append(p.Regions, replication.Region{Off: b * BlockSize, Len: BlockSize})
		}
		return p, nil
	}
	for b := range m.dirty {
		p.Regions = append(p.Regions, replication.Region{Off: b * BlockSize, Len: BlockSize})
	}
	for _, r := range m.recs {
		if r.Seq > after && r.Kind != journal.KindMarker {
			p.Regions = append(p.Regions, replication.Region{Off: r.Off, Len: r.Len})
		}
	}
	return p, nil
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

// Snapshot returns a copy of the store and the head it reflects. While
// journaling is stopped, the store holds writes past the head.
func (m *MemSource) Snapshot() ([]byte, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...), m.head.Seq
}

// Overflows counts records dropped unacknowledged and switches to
// stopped journaling.
func (m *MemSource) Overflows() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.overflows
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

// Tamper damages kept record seq (its data, or its length when it has
// none) without resealing it, as a bad disk would.
func (m *MemSource) Tamper(seq uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.recs) == 0 || seq < m.recs[0].Seq || seq > m.head.Seq {
		return
	}
	i := seq - m.recs[0].Seq
	r := m.recs[i]
	if len(r.Data) > 0 {
		r.Data = append([]byte(nil), r.Data...)
		r.Data[0] ^= 0xff
	} else {
		r.Len++
	}
	recs := append([]journal.Record(nil), m.recs...)
	recs[i] = r
	m.recs = recs
}

// Agreed returns the last acknowledged record.
func (m *MemSource) Agreed(ctx context.Context) (replication.Position, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return replication.Position{Seq: m.acked, Sum: m.ackedSum}, m.acked > 0, nil
}

// MarkDirty marks the regions' blocks dirty.
func (m *MemSource) MarkDirty(ctx context.Context, regions []replication.Region) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	for _, r := range regions {
		m.markLocked(r.Off, r.Len, dirtyMark{gen: m.gen})
	}
	return nil
}

// LoseTail simulates a crash that lost the records after seq (which must
// be kept, or the last acknowledged): they leave the journal, and the
// store's bytes they wrote become 0xEE, as an unknown mix of old and new
// data would be. It returns the number of records lost.
func (m *MemSource) LoseTail(seq uint64) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	head := replication.Position{Seq: m.acked, Sum: m.ackedSum}
	n := 0
	for n < len(m.recs) && m.recs[n].Seq <= seq {
		head = replication.Position{Seq: m.recs[n].Seq, Sum: m.recs[n].Sum}
		n++
	}
	lost := m.recs[n:]
	for _, r := range lost {
		m.keptBytes -= int64(len(r.Data)) + journal.HeaderSize
		if r.Kind != journal.KindMarker {
			for i := r.Off; i < r.Off+r.Len; i++ {
				m.data[i] = 0xEE
			}
		}
	}
	m.recs = m.recs[:n]
	m.head = head
	return len(lost)
}

// HoldAcks makes acknowledgements release nothing and leave the agreed
// point where it is, as a primary whose journal holds never reached its
// disk before a crash.
func (m *MemSource) HoldAcks(hold bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.holdAcks = hold
}
