package replicationtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replication"
)

// MemSink is an in-memory replica: a consistent store, the journal of
// received records and a staging area for syncs, which CommitSync applies
// at once. Every call is durable when it returns, except staged regions
// past the last SyncProgress, which Crash drops.
type MemSink struct {
	mu      sync.Mutex
	store   []byte
	state   replication.SinkState
	journal []journal.Record // every record appended and committed, in order
	staged  []stagedOp
	pending []journal.Record // appended during a sync
	commits int
	// progresses counts SyncProgress calls.
	progresses int
	gaps       []string

	// JournalLimit, when positive, bounds the records kept in the journal
	// (the oldest go first), for long benchmarks.
	JournalLimit int

	// FailAppend, when set, is called by AppendReceived; an error fails
	// the call with nothing appended.
	FailAppend func(recs []journal.Record) error
	// OnRecover, when set, is called by Recover (the Server calls it
	// for every connection); its error fails the call.
	OnRecover func() error
}

type stagedOp struct {
	off  int64
	len  int64
	data []byte // nil: zeroes
}

var _ replication.Sink = (*MemSink)(nil)
var _ replication.ChainChecker = (*MemSink)(nil)
var _ replication.RangeLister = (*MemSink)(nil)
var _ replication.Recoverer = (*MemSink)(nil)

// Recover calls OnRecover, if set.
func (s *MemSink) Recover(ctx context.Context) error {
	if s.OnRecover != nil {
		return s.OnRecover()
	}
	return nil
}

// NewMemSink returns an empty replica of size bytes.
func NewMemSink(size int64) *MemSink { return &MemSink{store: make([]byte, size)} }

// Size is the replica's size.
func (s *MemSink) Size() int64 { return int64(len(s.store)) }

// State returns the durable state.
func (s *MemSink) State(ctx context.Context) (replication.SinkState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	if st.Sync != nil {
		c := *st.Sync
		st.Sync = &c
	}
	return st, nil
}

// AppendReceived appends records, applying them to the store outside a
// sync.
func (s *MemSink) AppendReceived(ctx context.Context, recs []journal.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.FailAppend != nil {
		if err := s.FailAppend(recs); err != nil {
			return err
		}
	}
	for _, r := range recs {
		r.Data = bytes.Clone(r.Data) // the receiver reuses its buffers
		if r.Seq != s.state.Head.Seq+1 || r.PrevSum != s.state.Head.Sum {
			s.gaps = append(s.gaps, fmt.Sprintf("record seq=%d after head seq=%d", r.Seq, s.state.Head.Seq))
			return fmt.Errorf("memsink: record seq=%d does not follow head seq=%d", r.Seq, s.state.Head.Seq)
		}
		s.state.Head = replication.Position{Seq: r.Seq, Sum: r.Sum}
		if s.state.Sync != nil {
			s.pending = append(s.pending, r)
			continue
		}
		s.applyLocked(r)
		s.journal = append(s.journal, r)
	}
	s.trimLocked()
	if s.state.Sync == nil {
		s.state.Consistent = s.state.Head.Seq
	}
	return nil
}

func (s *MemSink) applyLocked(r journal.Record) {
	switch r.Kind {
	case journal.KindWrite:
		copy(s.store[r.Off:], r.Data)
	case journal.KindZero, journal.KindTrim:
		clear(s.store[r.Off : r.Off+r.Len])
	}
}

// BeginSync starts a sync, discarding any in progress.
func (s *MemSink) BeginSync(ctx context.Context, info replication.SyncInfo) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.staged, s.pending = nil, nil
	if info.Rewind {
		n := 0
		for n < len(s.journal) && s.journal[n].Seq <= info.After {
			n++
		}
		s.journal = s.journal[:n]
		s.state.Consistent = min(s.state.Consistent, info.After)
	}
	s.state.Sync = &info
	s.state.Head = info.Base
	return nil
}

// RangesAfter returns the ranges of the journal's records after the
// record `after`, which it must hold with the same sum.
func (s *MemSink) RangesAfter(ctx context.Context, after replication.Position) ([]replication.Region, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	agreed := false
	var regions []replication.Region
	for i, r := range s.journal {
		switch {
		case r.Seq == after.Seq:
			if r.Sum != after.Sum {
				return nil, false, fmt.Errorf("%w: seq=%d sum differs", replication.ErrNotAgreed, r.Seq)
			}
			agreed = true
		case r.Seq > after.Seq:
			if i == 0 && r.Seq == after.Seq+1 && r.PrevSum == after.Sum && after.Seq > 0 {
				agreed = true
			}
			if r.Kind != journal.KindMarker {
				regions = append(regions, replication.Region{Off: r.Off, Len: r.Len})
			}
		}
	}
	if !agreed {
		return nil, false, fmt.Errorf("%w: seq=%d not held", replication.ErrNotAgreed, after.Seq)
	}
	return regions, false, nil
}

// WriteRegion stages data.
func (s *MemSink) WriteRegion(ctx context.Context, off int64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state.Sync == nil {
		return errors.New("memsink: region outside a sync")
	}
	s.staged = append(s.staged, stagedOp{off: off, len: int64(len(data)), data: append([]byte(nil), data...)})
	return nil
}

// ZeroRegion stages zeroes.
func (s *MemSink) ZeroRegion(ctx context.Context, off, length int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state.Sync == nil {
		return errors.New("memsink: region outside a sync")
	}
	s.staged = append(s.staged, stagedOp{off: off, len: length})
	return nil
}

// SyncProgress records the durable copy offset.
func (s *MemSink) SyncProgress(ctx context.Context, through int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state.Sync == nil {
		return errors.New("memsink: progress outside a sync")
	}
	s.state.Sync.CopiedThrough = through
	s.progresses++
	return nil
}

// EndCopy records the end of the copy.
func (s *MemSink) EndCopy(ctx context.Context, end replication.Position) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state.Sync == nil {
		return errors.New("memsink: end outside a sync")
	}
	s.state.Sync.Ended, s.state.Sync.End = true, end
	return nil
}

// CommitSync applies the staged regions and pending records at once.
func (s *MemSink) CommitSync(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sy := s.state.Sync
	if sy == nil || !sy.Ended || s.state.Head.Seq < sy.End.Seq {
		return errors.New("memsink: commit of a sync not ready")
	}
	if sy.Full {
		clear(s.store)
	}
	for _, op := range s.staged {
		if op.data == nil {
			clear(s.store[op.off : op.off+op.len])
		} else {
			copy(s.store[op.off:], op.data)
		}
	}
	for _, r := range s.pending {
		s.applyLocked(r)
	}
	s.journal = append(s.journal, s.pending...)
	s.trimLocked()
	s.staged, s.pending = nil, nil
	s.state.Sync = nil
	s.state.Initialized = true
	s.state.Consistent = s.state.Head.Seq
	s.commits++
	return nil
}

// ReadConsistent reads the consistent store.
func (s *MemSink) ReadConsistent(ctx context.Context, p []byte, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	copy(p, s.store[off:])
	return nil
}

// CheckChain verifies each committed record against the one before it
// (a sync starts a new chain at its base).
func (s *MemSink) CheckChain(ctx context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var through uint64
	for i, r := range s.journal {
		if i > 0 && s.journal[i-1].Seq+1 == r.Seq {
			if err := r.Verify(s.journal[i-1].Sum); err != nil {
				return through, err
			}
		} else if err := r.Verify(r.PrevSum); err != nil {
			return through, err
		}
		through = r.Seq
	}
	return through, nil
}

// Crash drops what a power cut would: staged regions past the last
// SyncProgress.
func (s *MemSink) Crash() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state.Sync == nil {
		return
	}
	keep := s.staged[:0]
	for _, op := range s.staged {
		if op.off+op.len <= s.state.Sync.CopiedThrough {
			keep = append(keep, op)
		}
	}
	s.staged = keep
}

// Snapshot returns a copy of the consistent store and its seq.
func (s *MemSink) Snapshot() ([]byte, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.store...), s.state.Consistent
}

// Records returns the committed records in order.
func (s *MemSink) Records() []journal.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]journal.Record(nil), s.journal...)
}

// Commits counts committed syncs.
func (s *MemSink) Commits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commits
}

// Progresses counts SyncProgress calls: the times a sync's staged
// regions were made durable.
func (s *MemSink) Progresses() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.progresses
}

// Gaps lists records that did not follow the head (never expected).
func (s *MemSink) Gaps() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.gaps...)
}

// Corrupt flips a byte of the consistent store (for verify tests).
func (s *MemSink) Corrupt(off int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.store[off] ^= 0xff
}

func (s *MemSink) trimLocked() {
	if s.JournalLimit > 0 && len(s.journal) > s.JournalLimit {
		n := len(s.journal) - s.JournalLimit
		clear(s.journal[:n])
		s.journal = s.journal[n:]
	}
}

// SnapshotRange returns a copy of [off, off+n) of the consistent store
// and its seq, taken at one instant.
func (s *MemSink) SnapshotRange(off, n int64) ([]byte, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.store[off:off+n]...), s.state.Consistent
}
