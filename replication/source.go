package replication

import (
	"context"
	"errors"
	"io"

	"github.com/tandem-dr/tandem/journal"
)

// ErrTruncated is returned (possibly wrapped) by Source.ReadFrom when the
// records asked for are no longer kept: the journal reached its limit and
// fell back to tracking dirty regions. The Sender answers it with a resync.
var ErrTruncated = errors.New("replication: journal truncated")

// Position is a point of a journal: a record's sequence number and its
// chained checksum. The zero Position is the empty journal.
type Position struct {
	Seq uint64
	Sum uint64
}

// Region is a byte range of a disk.
type Region struct {
	Off int64
	Len int64
}

// End is the offset just after the region.
func (r Region) End() int64 { return r.Off + r.Len }

// SyncPlan is what the primary copies for an initial sync or a resync: the
// regions to copy, read from the store after the plan is made, then the
// records after Base.
type SyncPlan struct {
	// Base is the journal head when the plan was made. Records after it
	// are shipped once the copy is complete, and the source keeps them
	// until they are acknowledged.
	Base Position
	// Regions cover every write that is neither at or before the point
	// the plan was asked from nor in a record after Base. For an initial
	// sync, the allocated regions of the disk. They need not be sorted,
	// merged or aligned.
	Regions []Region
	// Gen is the source's own tag for the dirty marks the plan covers
	// (such as disk.DirtyMap's generation); the Sender hands the plan
	// back, untouched, to SyncCommitted.
	Gen uint64
}

// Source is the primary's side of one protected disk: its journal and its
// current store. The daemon implements it over the journaling tap. All
// methods may be called concurrently.
type Source interface {
	// Size is the disk's size in bytes.
	Size() int64

	// Head is the newest record of the journal (the zero Position when
	// the journal has never held one).
	Head(ctx context.Context) (Position, error)

	// ReadFrom calls fn with the records from seq from onwards, in order,
	// up to the head at some moment during the call, and returns nil; or
	// the first error from fn, which stops the reading. When record from
	// is no longer kept (and from is not past the head) it returns an
	// error wrapping ErrTruncated or journal.ErrReleased without calling
	// fn; the Sender then resyncs. fn may keep neither the record's Data
	// nor the record after it returns. Each record is verified (its sums,
	// against the sum it follows) before fn gets it: a damaged record
	// stops the reading with an error wrapping journal.ErrCorrupt.
	ReadFrom(ctx context.Context, from uint64, fn func(journal.Record) error) error

	// NeedsResync reports whether the disk holds writes that no kept
	// record carries (the journal overflowed into dirty-region tracking)
	// and that a committed sync has not yet covered: true from the first
	// such write until SyncCommitted for a plan that covered it. The
	// Sender asks it whenever no sync is running and answers true with a
	// resync. It must be cheap.
	NeedsResync() bool

	// WaitAfter returns nil once the head is past seq, or ctx's error.
	WaitAfter(ctx context.Context, seq uint64) error

	// Acked tells the source that the secondary holds a consistent copy
	// of every write up to and including seq, durably: records up to seq
	// may be released. seq never goes backwards within one Sender.
	Acked(ctx context.Context, seq uint64) error

	// SyncCommitted tells the source that the secondary committed the
	// sync planned as p: every write p covered is held there durably, so
	// the dirty marks p covered may be cleared (marks made again after the
	// plan stay). It is called at most once per plan, and only on proof
	// (an acknowledgement naming the sync): a sync whose commit was not
	// seen is planned again.
	SyncCommitted(ctx context.Context, p SyncPlan) error

	// StartSync plans an initial sync (full) or a resync, and makes sure
	// every write from now on is journaled (it leaves overflow mode). For
	// a full sync the plan's regions are the disk's allocated regions; for
	// a resync, regions covering every write after seq `after` (the
	// secondary's consistent point) that is not in a record after the
	// plan's Base: the dirty regions, plus the ranges of the kept records
	// in (after, Base]. Dirty marks stay until SyncCommitted: a sync
	// interrupted by a fault or a restart is planned again from them.
	StartSync(ctx context.Context, full bool, after uint64) (SyncPlan, error)

	// ReadAt reads the current store. Any write whose data it returns must
	// be in a record at or before the Head read after it returns, or in a
	// dirty region (the tap journals before it writes the store).
	io.ReaderAt
}

// RecordAppender is implemented by sources that store records in their
// wire form (journal.Record.AppendBinary's), so that the Sender reads
// them straight into its frame, with one copy of the data instead of a
// read and an encode. AppendRecords is ReadFrom appending each record's
// bytes to buf (fn gets the record, a view into buf, once they are
// there, and the record stays when fn returns nil) until buf holds limit
// bytes or more, as journal.Log.AppendViews; it returns buf with the
// records fn accepted and ReadFrom's error.
type RecordAppender interface {
	AppendRecords(ctx context.Context, from uint64, buf []byte, limit int, fn func(journal.Record) error) ([]byte, error)
}

// Reconciler is implemented by sources that can recover from a
// divergence in which the secondary holds records the primary lost (see
// Sender's reconcile, protocol version 3). Without it such a divergence
// holds shipping until the disk is protected again.
type Reconciler interface {
	// Agreed returns the last record a secondary acknowledged (its seq
	// and sum), which the source keeps knowing across restarts; ok is
	// false when none ever was. The secondary checks that it holds that
	// record before any of its own is taken back: an unrelated history
	// is never reconciled.
	Agreed(ctx context.Context) (p Position, ok bool, err error)
	// MarkDirty marks regions dirty, durably: every resync plans them
	// until one that covered them commits (SyncCommitted).
	MarkDirty(ctx context.Context, regions []Region) error
}

// Backlogger is implemented by sources that can count the records and
// bytes after a sequence number cheaply. When absent, the Sender estimates
// the lag in bytes from the records it has read.
type Backlogger interface {
	// Backlog counts the records after seq and their data bytes.
	Backlog(ctx context.Context, after uint64) (records, bytes uint64, err error)
}
