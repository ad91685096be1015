package replication

import (
	"context"
	"errors"

	"github.com/tandem-dr/tandem/journal"
)

// ErrUnknownDisk is returned by a Server's Lookup for a disk the secondary
// does not replicate for that site. The primary is told with an error
// frame.
var ErrUnknownDisk = errors.New("replication: unknown disk")

// SyncInfo describes an initial sync or resync in progress on the
// secondary.
type SyncInfo struct {
	// ID names the sync; the primary picks it at random.
	ID uint64
	// Full is true for an initial sync (the replica starts from zeroes),
	// false for a resync of regions over the last consistent point.
	Full bool
	// Base is the primary's journal head when the sync was planned. The
	// first record after the copy is Base.Seq+1, chained to Base.Sum.
	Base Position
	// Total is the number of bytes the primary scans (for percentages).
	Total int64
	// CopiedThrough is the offset below which every region of the sync
	// has been received and made durable (SyncProgress).
	CopiedThrough int64
	// Ended is true once the copy is complete (EndCopy); End is then the
	// primary's head at the end of the copy. The sync commits once
	// records through End are durable.
	Ended bool
	End   Position
	// Rewind is set (on BeginSync only) for a resync after a reconcile
	// (protocol version 3): the replica holds records past After that the
	// primary lost; the sync's regions cover every range they touched,
	// and the replica's consistent point goes back to After until the
	// sync commits.
	Rewind bool
	After  uint64
}

// RangeLister is implemented by sinks that can list the ranges their
// records after a seq touched, which the primary resyncs after a
// divergence (see SyncInfo.Rewind). Without it the receiver answers that
// the whole disk must be copied.
type RangeLister interface {
	// RangesAfter returns the ranges of the records after the record
	// `after`, or whole when some of them are no longer kept. It fails
	// with an error wrapping ErrNotAgreed when the sink's history does not
	// hold record after.Seq with sum after.Sum (or cannot tell).
	RangesAfter(ctx context.Context, after Position) (regions []Region, whole bool, err error)
}

// ErrNotAgreed reports a reconcile whose point is not in the secondary's
// history: the sites' histories differ, and nothing is taken back.
var ErrNotAgreed = errors.New("replication: the secondary's history does not hold the reconcile's point")

// SinkState is the secondary's durable state for one replica disk, as it
// was at the last successful call of the Sink. The receiver sends it to
// the primary in the handshake.
type SinkState struct {
	// Head is the newest durable record received (after BeginSync, the
	// sync's Base until records arrive).
	Head Position
	// Consistent is the sequence number of the replica's consistent
	// point: the state NAME@latest shows. Meaningful when Initialized.
	Consistent uint64
	// Initialized is true once an initial sync has committed.
	Initialized bool
	// Sync is the sync in progress, or nil.
	Sync *SyncInfo
}

// Sink is the secondary's side of one replica disk: its retention journal,
// its replica store and a staging area for syncs. The daemon implements
// it. The receiver calls it from one goroutine at a time, in the order of
// the stream, so a method never runs concurrently with another.
//
// Records and regions of a sync in progress must not change what the
// replica shows at its consistent point: a replica is never left
// half-resynchronised. Only CommitSync moves the consistent point past a
// sync, atomically; outside a sync, AppendReceived moves it with the head.
type Sink interface {
	// Size is the replica disk's size in bytes.
	Size() int64

	// State returns the durable state (see SinkState).
	State(ctx context.Context) (SinkState, error)

	// AppendReceived appends records to the journal. recs follow the
	// head with no gap and their chain has been verified. When it
	// returns nil they are durable. Outside a sync, the consistent point
	// moves to the last of them. The sink may keep neither the slice
	// recs nor the records' Data after it returns: the receiver decodes
	// records in place in its frame buffers and reuses them.
	AppendReceived(ctx context.Context, recs []journal.Record) error

	// BeginSync starts a sync, durably, discarding any sync in progress
	// (its staged regions and the records appended since the last
	// consistent point). Afterwards Head is info.Base. For a full sync
	// the replica starts from zeroes; for a resync from its consistent
	// point.
	BeginSync(ctx context.Context, info SyncInfo) error

	// WriteRegion stages data at off for the sync in progress. It need
	// not be durable until SyncProgress. data is not retained after the
	// call unless copied.
	WriteRegion(ctx context.Context, off int64, data []byte) error

	// ZeroRegion stages zeroes over [off, off+length) for the sync.
	ZeroRegion(ctx context.Context, off, length int64) error

	// SyncProgress makes every staged region below through durable and
	// records through as the sync's CopiedThrough.
	SyncProgress(ctx context.Context, through int64) error

	// EndCopy records, durably, that the copy is complete and the sync
	// commits once records through end are durable.
	EndCopy(ctx context.Context, end Position) error

	// CommitSync makes the staged regions and the records appended since
	// the sync began the replica's consistent state, atomically and
	// durably; the consistent point becomes the head. It is called once
	// the copy has ended and the head has reached the sync's End.
	CommitSync(ctx context.Context) error

	// ReadConsistent reads the replica at its consistent point (what
	// NAME@latest shows), for verify.
	ReadConsistent(ctx context.Context, p []byte, off int64) error
}

// ChainChecker is implemented by sinks that can check the hash chain of
// their retention journal. When present, verify reports its result.
type ChainChecker interface {
	// CheckChain checks every kept record's chained checksum and returns
	// the last sequence number checked.
	CheckChain(ctx context.Context) (through uint64, err error)
}

// DeferredApplier is a Sink that can acknowledge records before it has
// applied them to its store: AppendDurable is AppendReceived's first half
// (the records are in the journal, durably: the head and, outside a sync,
// the consistent point move over them) and Apply its second (the store
// shows them). The receiver's pipelined path calls AppendDurable,
// acknowledges, then calls Apply with the same records from another
// goroutine, while it calls AppendDurable with the next records: the
// acknowledgement waits for neither this group's store writes nor the
// last group's. Apply calls come in order, one at a time, and every
// call other than AppendDurable waits until the last Apply returned.
type DeferredApplier interface {
	AppendDurable(ctx context.Context, recs []journal.Record) error
	Apply(ctx context.Context, recs []journal.Record) error
}

// Recoverer is implemented by sinks that a failure can leave unusable
// until they recover (a store write that failed, a sync step that did not
// finish). The Server calls Recover for each connection once it is the
// only one driving the sink, before it reads the sink's state; it does
// nothing on a sound sink. An error refuses the connection with it, and
// the primary's next attempt tries again.
type Recoverer interface {
	Recover(ctx context.Context) error
}
