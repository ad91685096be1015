package disk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/nbd"
)

// Defaults for TapOptions.
const (
	// DefaultCheckpointEvery is how often the applier checkpoints: it
	// fdatasyncs the store and advances the "apply" hold, which releases
	// the journal records the store now holds durably. The journal is the
	// store's write-ahead log, so checkpoints only bound its unreleased
	// tail (disk space, and what a restart replays); rare ones leave the
	// device to the writes that acknowledgements wait for. In sync mode
	// those are the secondary's journal appends: with 5 s and 256 MiB
	// checkpoints, 1 MiB writes on one shared disk ran 9% slower.
	DefaultCheckpointEvery = 30 * time.Second
	// DefaultCheckpointBytes of records journaled since the last
	// checkpoint trigger one early, or a quarter of the journal's limit
	// when that is less. A checkpoint's fdatasync of the store stalls the
	// store writes that land on pages under writeback: with 32 MiB, 4 KiB
	// random writes ran at a third of a plain file's rate, with 256 MiB at
	// about the same (the journal's segments are not mapped, so a longer
	// unreleased tail costs disk, not memory).
	DefaultCheckpointBytes = 1 << 30
)

// HoldApply is the journal hold the tap keeps: records at or below it are
// durably in the store.
const HoldApply = "apply"

// Journal metadata keys the tap keeps in its log.
const (
	metaOverflow    = "tap.overflow"
	metaDirtyPrefix = "tap.dirty."
)

// Log attribute keys.
const (
	logKeySeq     = "seq"
	logKeyErr     = "err"
	logKeyRecords = "records"
)

// ErrTapClosed is returned by writes to a closed Tap.
var ErrTapClosed = errors.New("disk: tap closed")

// errRepairPending: the store refused a journaled write, and the repair
// (at the next checkpoint from the applier) has not run yet.
var errRepairPending = errors.New("disk: the store refused a journaled write; repair pending")

// Store is the block store under a Tap. *File satisfies it; Extents and
// CanMultiConn are used when the store has them.
type Store interface {
	nbd.Backend
	nbd.Flusher
	nbd.Trimmer
	nbd.Zeroer
}

// Acker is the hook for synchronous replication: WaitAcked returns once
// the secondary holds record seq durably, or with an error.
type Acker interface {
	WaitAcked(ctx context.Context, seq uint64) error
}

// TapOptions configures a Tap. Zero fields mean their defaults.
type TapOptions struct {
	// CheckpointEvery is the applier's period; negative disables
	// periodic checkpoints (Close and a full journal still checkpoint).
	// The applier skips a checkpoint that would free no journal space
	// because another hold (replication) is further behind.
	CheckpointEvery time.Duration
	// CheckpointBytes of records journaled since the last checkpoint
	// trigger one early; negative disables that trigger; zero is
	// DefaultCheckpointBytes or a quarter of the log's MaxBytes, the
	// lesser.
	CheckpointBytes int64
	// RegionSize is the granularity of dirty-region tracking after a
	// journal overflow.
	RegionSize int64
}

// Tap is the journaling write path of a disk: a Store wrapper with the
// same method set that records every write, zero and trim in the disk's
// journal before the store sees it.
//
// Acknowledgement contract, for every write path (WriteAt, WriteAtFUA,
// Zero, Trim):
//
//   - Overlapping writes are serialised by a range lock held from the
//     journal append until the store write returns, so the journal's
//     order is the store's order.
//   - The record is committed to the journal (it survives kill -9) before
//     the store is written: the store never holds a write its journal
//     lacks. The call returns after the store write.
//   - Returned without error: the write is journaled and in the store.
//     It survives kill -9; it survives a power cut after a later Flush,
//     or at once for WriteAtFUA (the journal is the write-ahead log: after
//     a crash NewTap replays the records the store may lack).
//   - An error from the journal (a failed commit) means nothing was
//     journaled and the store was not touched. The one error returned for
//     a journaled write is the store refusing it (ENOSPC, EIO): NBD leaves
//     the range's contents undefined, and the tap re-applies the journal
//     from that record at its next checkpoint before it lets the journal
//     release it, so store, journal and replica converge on the journaled
//     data. WriteAtFUA also fails when the journal cannot be synced.
//   - When the journal is full (journal.ErrFull) writes are neither
//     failed nor blocked: the tap overflows into dirty-region tracking,
//     persisting a region's mark (synced) before the store write, and
//     reports Overflowed until Resume.
//   - Writes are paced to the store's checkpoints: when more than twice
//     CheckpointBytes were journaled since the last checkpoint began, a
//     write waits (at most a second) for it to end, so the journal's
//     unreleased tail stays bounded when the store is slower than writes.
//   - With an Acker set, a journaled write returns only after WaitAcked
//     for its seq. WaitAcked's error is not returned to the client (the
//     write is journaled and applied); what to do about a secondary that
//     does not acknowledge, such as falling back to asynchronous mode
//     after a timeout, is the Acker's policy.
//
// Reads go to the store, which always holds the current contents.
type Tap struct {
	store  Store
	log    *journal.Log
	opts   TapOptions
	logger *slog.Logger

	gate   sync.RWMutex // writes hold it shared; replay, repair, Resume and Cut exclusively
	ranges rangeLock
	dirty  *DirtyMap

	mu         sync.Mutex
	inflight   map[uint64]struct{} // seqs appended whose store write has not returned
	appending  map[uint64]int      // Appends in progress, by the lowest seq they can get
	repairFrom uint64              // first seq the store failed to apply; 0 when none
	overflow   bool
	barrier    bool  // the overflow's first checkpoint is done (overflowBarrier)
	storeDirty bool  // unjournaled writes since the last store Flush
	sinceCP    int64 // record bytes journaled since the last checkpoint
	applied    uint64

	act       activity      // the activity log (activity.go)
	syncedSeq atomic.Uint64 // the journal is durable through it (Flush, FUA)

	acker   atomic.Pointer[ackerBox]
	persist sync.Mutex    // serialises persisting the dirty map
	cpMu    sync.Mutex    // serialises checkpoints
	barMu   sync.Mutex    // serialises overflowBarrier
	cpDone  chan struct{} // closed and replaced when a checkpoint ends; under mu
	kick    chan struct{}
	closed  atomic.Bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// beforeAppend, when set (by tests), runs as a write's Append begins.
	beforeAppend func(journal.Record)
}

type ackerBox struct{ a Acker }

var (
	_ nbd.Backend     = (*Tap)(nil)
	_ nbd.Flusher     = (*Tap)(nil)
	_ nbd.FUAWriter   = (*Tap)(nil)
	_ nbd.Trimmer     = (*Tap)(nil)
	_ nbd.Zeroer      = (*Tap)(nil)
	_ nbd.Extenter    = (*Tap)(nil)
	_ nbd.MultiConner = (*Tap)(nil)
	_ Store           = (*File)(nil)
)

// NewTap puts a journaling tap over store. It first brings the store up
// to date: the records after the "apply" hold (written to the journal but
// perhaps not to the store before a crash) are replayed in order, the
// store is fdatasynced and the hold advanced (created, at the base, when
// the log has none). It restores the overflow
// state and dirty map kept in the log. It then starts the applier, which
// Close stops. The tap does not own store or log: the caller closes them
// after the tap.
func NewTap(ctx context.Context, store Store, log *journal.Log, opts TapOptions, logger *slog.Logger) (*Tap, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.CheckpointEvery == 0 {
		opts.CheckpointEvery = DefaultCheckpointEvery
	}
	if opts.CheckpointBytes == 0 {
		opts.CheckpointBytes = min(DefaultCheckpointBytes, max(log.MaxBytes()/4, 1))
	}
	t := &Tap{
		store:     store,
		log:       log,
		opts:      opts,
		logger:    logger,
		dirty:     NewDirtyMap(store.Size(), opts.RegionSize),
		inflight:  make(map[uint64]struct{}),
		appending: make(map[uint64]int),
		kick:      make(chan struct{}, 1),
		cpDone:    make(chan struct{}),
	}
	if v, err := log.Meta(metaOverflow); err == nil {
		t.overflow = string(v) == "1"
	} else if !errors.Is(err, journal.ErrNotFound) {
		return nil, fmt.Errorf("new tap: %w", err)
	}
	chunks, err := log.MetaPrefix(metaDirtyPrefix)
	if err != nil {
		return nil, fmt.Errorf("new tap: %w", err)
	}
	for k, v := range chunks {
		if err := t.dirty.Decode(k, v); err != nil {
			return nil, fmt.Errorf("new tap: %w", err)
		}
	}
	t.dirty.Encode(false) // loaded chunks are already persisted
	if err := t.recoverActivity(ctx); err != nil {
		return nil, fmt.Errorf("new tap: %w", err)
	}
	t.applied = log.Holds()[HoldApply]
	if base, _ := log.Base(); base > t.applied {
		t.applied = base
	}
	if err := t.replay(ctx, t.applied+1); err != nil {
		return nil, fmt.Errorf("new tap: %w", err)
	}
	// Without an apply hold, another consumer's hold alone could release
	// a record whose store write is still in flight.
	if _, ok := log.Holds()[HoldApply]; !ok {
		if err := log.SetHold(HoldApply, t.applied); err != nil {
			return nil, fmt.Errorf("new tap: %w", err)
		}
	}
	if t.overflow || t.dirty.Len() > 0 {
		logger.Warn("disk needs resync", "overflowed", t.overflow, "dirty_regions", t.dirty.Len())
	}
	actx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	t.wg.Add(1)
	go t.applier(actx)
	return t, nil
}

// replay applies the records from seq from onwards to the store, then
// fdatasyncs it and advances the apply hold. The caller has no writes in
// flight (NewTap, or gate held exclusively).
func (t *Tap) replay(ctx context.Context, from uint64) error {
	var n int
	var last uint64
	err := t.log.ReadFrom(ctx, from, func(r journal.Record) error {
		if err := t.apply(r); err != nil {
			return err
		}
		n++
		last = r.Seq
		return nil
	})
	if err != nil {
		return fmt.Errorf("replay journal from %d: %w", from, err)
	}
	if n == 0 {
		return nil
	}
	if err := t.store.Flush(ctx); err != nil {
		return fmt.Errorf("replay journal: %w", err)
	}
	if err := t.log.SetHold(HoldApply, last); err != nil {
		return fmt.Errorf("replay journal: %w", err)
	}
	t.mu.Lock()
	t.applied = max(t.applied, last)
	t.mu.Unlock()
	t.logger.Info("journal replayed into store", logKeyRecords, n, logKeySeq, last)
	return nil
}

// apply performs one record on the store.
func (t *Tap) apply(r journal.Record) error {
	if r.Kind != journal.KindMarker && r.Off+r.Len > t.store.Size() {
		return fmt.Errorf("apply seq=%d: range off=%d len=%d past disk size %d", r.Seq, r.Off, r.Len, t.store.Size())
	}
	var err error
	switch r.Kind {
	case journal.KindWrite:
		_, err = t.store.WriteAt(r.Data, r.Off)
	case journal.KindZero:
		err = t.store.Zero(r.Off, r.Len, false)
	case journal.KindTrim:
		err = t.store.Trim(r.Off, r.Len)
	}
	if err != nil {
		return fmt.Errorf("apply seq=%d: %w", r.Seq, err)
	}
	return nil
}

// Size is the disk's size.
func (t *Tap) Size() int64 { return t.store.Size() }

// ReadAt reads from the store.
func (t *Tap) ReadAt(p []byte, off int64) (int, error) { return t.store.ReadAt(p, off) }

// Extents describes the store's allocation; a store without Extents is
// reported as all data.
func (t *Tap) Extents(off, length int64) ([]nbd.Extent, error) {
	if e, ok := t.store.(nbd.Extenter); ok {
		return e.Extents(off, length)
	}
	return []nbd.Extent{{Length: length}}, nil
}

// CanMultiConn is true: Flush syncs the journal of every connection.
func (t *Tap) CanMultiConn() bool { return true }

// WriteAt journals and writes p at off. See the acknowledgement contract
// on Tap. It does not retain p.
func (t *Tap) WriteAt(p []byte, off int64) (int, error) {
	if err := t.write(journal.KindWrite, off, int64(len(p)), p, false, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAtFUA is WriteAt that returns once the record is synced in the
// journal (in overflow mode: once the store is fdatasynced). See the
// acknowledgement contract on Tap.
func (t *Tap) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := t.write(journal.KindWrite, off, int64(len(p)), p, false, true); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Zero journals a zero record and zeroes the range in the store. See the
// acknowledgement contract on Tap.
func (t *Tap) Zero(off, length int64, mayTrim bool) error {
	return t.write(journal.KindZero, off, length, nil, mayTrim, false)
}

// Trim journals a trim record and trims the range in the store. See the
// acknowledgement contract on Tap.
func (t *Tap) Trim(off, length int64) error {
	return t.write(journal.KindTrim, off, length, nil, false, false)
}

// Flush returns once every write completed before it is durable: the
// journal is synced (in overflow mode the store is fdatasynced too) and
// the dirty map persisted. The store itself is fdatasynced by the
// applier's checkpoints.
func (t *Tap) Flush(ctx context.Context) error {
	t.mu.Lock()
	storeDirty := t.storeDirty
	t.storeDirty = false
	t.mu.Unlock()
	if storeDirty {
		if err := t.store.Flush(ctx); err != nil {
			t.mu.Lock()
			t.storeDirty = true
			t.mu.Unlock()
			return fmt.Errorf("flush tap: %w", err)
		}
	}
	if err := t.persistDirty(ctx, false); err != nil {
		return fmt.Errorf("flush tap: %w", err)
	}
	head := t.log.Head()
	if err := t.log.Sync(ctx); err != nil {
		return fmt.Errorf("flush tap: %w", err)
	}
	t.noteSynced(head)
	return nil
}

// write is the one write path of WriteAt, WriteAtFUA, Zero and Trim.
func (t *Tap) write(kind journal.Kind, off, length int64, p []byte, mayTrim, fua bool) error {
	if t.closed.Load() {
		return ErrTapClosed
	}
	if off < 0 || length < 0 || off+length > t.store.Size() {
		return fmt.Errorf("tap %s off=%d len=%d: %w", kindName(kind), off, length, ErrOutOfRange)
	}
	if length == 0 {
		return nil
	}
	ctx := context.Background()
	last, err := t.writeGated(ctx, kind, off, length, p, mayTrim, fua)
	if err != nil {
		return err
	}
	// Wait for the secondary without the gate or the range: Resume and
	// Cut must not stall behind a secondary that does not answer.
	if b := t.acker.Load(); b != nil && last != 0 {
		if err := b.a.WaitAcked(ctx, last); err != nil {
			t.logger.Debug("acker did not acknowledge", logKeySeq, last, logKeyErr, err)
		}
	}
	return nil
}

// writeGated is write's part under the gate and the range lock: journal
// (or, in overflow, track) and store. It returns the last seq journaled,
// 0 when none.
func (t *Tap) writeGated(ctx context.Context, kind journal.Kind, off, length int64, p []byte, mayTrim, fua bool) (uint64, error) {
	t.gate.RLock()
	defer t.gate.RUnlock()
	unlock := t.ranges.lock(off, off+length)
	defer unlock()

	var last uint64
	for done := int64(0); done < length; {
		n := length - done
		rec := journal.Record{Kind: kind, Off: off + done, Len: n}
		if kind == journal.KindWrite {
			n = min(n, journal.MaxData)
			rec.Len, rec.Data = n, p[done:done+n]
		}
		seq, journaled, err := t.journal(ctx, rec)
		if err != nil {
			return last, fmt.Errorf("tap %s off=%d len=%d: %w", kindName(kind), rec.Off, rec.Len, err)
		}
		if !journaled {
			return last, t.writeUnjournaled(ctx, kind, off+done, length-done, p[min(done, int64(len(p))):], mayTrim, fua)
		}
		err = t.activate(ctx, rec.Off, rec.Len, seq)
		if err == nil {
			err = t.storeOp(kind, rec.Off, rec.Len, rec.Data, mayTrim)
		}
		t.mu.Lock()
		delete(t.inflight, seq)
		if err != nil && (t.repairFrom == 0 || seq < t.repairFrom) {
			t.repairFrom = seq
		}
		t.mu.Unlock()
		if err != nil {
			t.logger.Error("store refused a journaled write; repair at next checkpoint", logKeySeq, seq, logKeyErr, err)
			return last, fmt.Errorf("tap %s seq=%d: %w", kindName(kind), seq, err)
		}
		last = seq
		done += n
	}
	if fua {
		head := t.log.Head()
		if err := t.log.Sync(ctx); err != nil {
			return last, fmt.Errorf("tap %s off=%d len=%d: %w", kindName(kind), off, length, err)
		}
		t.noteSynced(head)
	}
	return last, nil
}

// noteSynced records that the journal is durable through seq.
func (t *Tap) noteSynced(seq uint64) {
	for {
		old := t.syncedSeq.Load()
		if seq <= old || t.syncedSeq.CompareAndSwap(old, seq) {
			return
		}
	}
}

// journal appends rec and waits for its commit. It reports journaled
// false, without error, when the tap is (or has just gone) into overflow.
func (t *Tap) journal(ctx context.Context, rec journal.Record) (uint64, bool, error) {
	t.pace()
	for attempt := 0; ; attempt++ {
		t.mu.Lock()
		if t.overflow {
			t.mu.Unlock()
			return 0, false, nil
		}
		// Append writes the record: not under t.mu, so that writes
		// go to the journal concurrently. Until its seq is known, the
		// record is in appending under a floor it cannot be below
		// (Committed never goes back), which keeps checkpoints from
		// releasing it.
		floor := t.log.Committed() + 1
		t.appending[floor]++
		t.mu.Unlock()
		if t.beforeAppend != nil {
			t.beforeAppend(rec)
		}
		p, err := t.log.Append(ctx, rec)
		t.mu.Lock()
		if t.appending[floor]--; t.appending[floor] == 0 {
			delete(t.appending, floor)
		}
		if err == nil {
			t.inflight[p.Seq()] = struct{}{}
			t.sinceCP += int64(rec.EncodedSize())
			kick := t.opts.CheckpointBytes > 0 && t.sinceCP >= t.opts.CheckpointBytes
			t.mu.Unlock()
			if kick {
				t.kickApplier()
			}
			if err := p.Wait(ctx); err != nil {
				t.mu.Lock()
				delete(t.inflight, p.Seq())
				t.mu.Unlock()
				return 0, false, err
			}
			return p.Seq(), true, nil
		}
		t.mu.Unlock()
		if !errors.Is(err, journal.ErrFull) {
			return 0, false, err
		}
		// Full. When only the applier holds records back, a checkpoint
		// frees space at once; otherwise (replication behind) overflow.
		if attempt == 0 && t.applyIsLowestHold() {
			if cerr := t.checkpoint(ctx, false); cerr != nil {
				t.logger.Warn("checkpoint on full journal", logKeyErr, cerr)
			}
			continue
		}
		if err := t.enterOverflow(); err != nil {
			return 0, false, err
		}
		return 0, false, nil
	}
}

// paceWait bounds how long pace holds up one write.
const paceWait = time.Second

// pace holds a write back while the store's checkpoints lag: when more
// than twice CheckpointBytes were journaled since the last checkpoint
// began, the write waits (at most paceWait) for that checkpoint to end.
// Writes then go at the speed the store can be made durable, and the
// journal's unreleased tail stays bounded instead of growing until the
// journal is full.
func (t *Tap) pace() {
	if t.opts.CheckpointBytes <= 0 {
		return
	}
	t.mu.Lock()
	lagging := t.sinceCP >= 2*t.opts.CheckpointBytes && t.repairFrom == 0
	done := t.cpDone
	t.mu.Unlock()
	if !lagging {
		return
	}
	t.kickApplier()
	select {
	case <-done:
	case <-time.After(paceWait):
	}
}

func (t *Tap) applyIsLowestHold() bool {
	t.mu.Lock()
	applied := t.applied
	t.mu.Unlock()
	for k, v := range t.log.Holds() {
		if k != HoldApply && v <= applied {
			return false
		}
	}
	return true
}

// LogJournalFull is the message a tap logs (Warn) when its journal reaches
// its limit and it switches to dirty-region tracking; the benchmarks look
// for it in the daemon's log.
const LogJournalFull = "journal full: tracking dirty regions, disk needs resync"

// enterOverflow switches to dirty-region tracking and persists that.
func (t *Tap) enterOverflow() error {
	t.mu.Lock()
	was := t.overflow
	t.overflow = true
	if !was {
		t.barrier = false
	}
	t.mu.Unlock()
	if was {
		return nil
	}
	if err := t.log.SetMeta(metaOverflow, []byte("1")); err != nil {
		return fmt.Errorf("enter overflow: %w", err)
	}
	t.logger.Warn(LogJournalFull, "journal_bytes", t.log.Bytes())
	return nil
}

// writeUnjournaled is the overflow write path: mark (and, for a region
// newly dirty, persist and sync the mark) before writing the store.
func (t *Tap) writeUnjournaled(ctx context.Context, kind journal.Kind, off, length int64, p []byte, mayTrim, fua bool) error {
	if err := t.overflowBarrier(ctx); err != nil {
		return fmt.Errorf("tap %s off=%d len=%d: %w", kindName(kind), off, length, err)
	}
	if t.dirty.Mark(off, length) {
		if err := t.persistDirty(ctx, true); err != nil {
			return fmt.Errorf("tap %s off=%d len=%d: %w", kindName(kind), off, length, err)
		}
	}
	if kind != journal.KindWrite {
		p = nil
	}
	err := t.storeOp(kind, off, length, p, mayTrim)
	// Set after the store write completes, so that a Flush that clears
	// the flag covers every unjournaled write completed before it.
	t.mu.Lock()
	t.storeDirty = true
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("tap %s off=%d len=%d: %w", kindName(kind), off, length, err)
	}
	if fua {
		if err := t.Flush(ctx); err != nil {
			return err
		}
	}
	return nil
}

// overflowBarrier runs before the first unjournaled store write of an
// overflow. NewTap replays every record past the apply hold, and a record
// journaled before the overflow but not yet checkpointed (replication
// holds the journal, so the applier skipped its checkpoints) would be
// replayed after a crash over a newer unjournaled write to the same
// blocks. So the barrier waits until no journaled write is in flight —
// including Appends that began before the overflow and commit after it,
// which no write can start once it is set — and checkpoints through every
// committed record, once per overflow.
func (t *Tap) overflowBarrier(ctx context.Context) error {
	t.mu.Lock()
	done := t.barrier
	t.mu.Unlock()
	if done {
		return nil
	}
	t.barMu.Lock()
	defer t.barMu.Unlock()
	for {
		t.mu.Lock()
		done, repairing := t.barrier, t.repairFrom != 0
		busy := len(t.appending) > 0 || len(t.inflight) > 0
		t.mu.Unlock()
		switch {
		case done:
			return nil
		case repairing:
			// The repair needs the gate, which this write holds shared.
			return fmt.Errorf("checkpoint before the first unjournaled write: %w", errRepairPending)
		}
		if !busy {
			// Nothing more can commit until Resume, which waits for
			// this write (the gate).
			target := t.log.Committed()
			if err := t.checkpoint(ctx, false); err != nil {
				return fmt.Errorf("checkpoint before the first unjournaled write: %w", err)
			}
			t.mu.Lock()
			t.barrier = t.barrier || t.applied >= target
			done = t.barrier
			t.mu.Unlock()
			if done {
				return nil
			}
		}
		// A journaled write's Append or store write has not returned yet.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

func (t *Tap) storeOp(kind journal.Kind, off, length int64, p []byte, mayTrim bool) error {
	switch kind {
	case journal.KindWrite:
		_, err := t.store.WriteAt(p[:length], off)
		return err
	case journal.KindZero:
		return t.store.Zero(off, length, mayTrim)
	case journal.KindTrim:
		return t.store.Trim(off, length)
	}
	return fmt.Errorf("tap: no store operation for record kind %d", kind)
}

// persistDirty writes the changed chunks of the dirty map to the log's
// metadata, and syncs the journal when sync is set.
func (t *Tap) persistDirty(ctx context.Context, sync bool) error {
	t.persist.Lock()
	defer t.persist.Unlock()
	chunks := t.dirty.Encode(false)
	for k, v := range chunks {
		var err error
		if len(v) == 0 {
			err = t.log.DeleteMeta(metaDirtyPrefix + k)
		} else {
			err = t.log.SetMeta(metaDirtyPrefix+k, v)
		}
		if err != nil {
			return fmt.Errorf("persist dirty map: %w", err)
		}
	}
	if sync && len(chunks) > 0 {
		return t.log.Sync(ctx)
	}
	return nil
}

func kindName(k journal.Kind) string {
	switch k {
	case journal.KindWrite:
		return "write"
	case journal.KindZero:
		return "zero"
	case journal.KindTrim:
		return "trim"
	}
	return "record"
}

// SetAcker sets (or, with nil, removes) the synchronous replication hook.
func (t *Tap) SetAcker(a Acker) {
	if a == nil {
		t.acker.Store(nil)
		return
	}
	t.acker.Store(&ackerBox{a})
}

// Overflowed reports whether the journal overflowed and the tap is
// tracking dirty regions instead of journaling.
func (t *Tap) Overflowed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.overflow
}

// NeedsResync reports whether the disk has writes the journal lacks:
// it overflowed, or dirty regions are not yet cleared.
func (t *Tap) NeedsResync() bool { return t.Overflowed() || t.dirty.Len() > 0 }

// MarkDirty marks a range dirty, durably (the journal is synced), as if
// it had been written without journaling: every resync plans it until one
// that covered it clears it. Replication calls it for ranges the
// secondary holds writes of that this disk lost in a crash.
func (t *Tap) MarkDirty(ctx context.Context, off, length int64) error {
	if off < 0 || length < 0 || off+length > t.store.Size() {
		return fmt.Errorf("tap mark dirty off=%d len=%d: %w", off, length, ErrOutOfRange)
	}
	if length == 0 || !t.dirty.Mark(off, length) {
		return nil
	}
	if err := t.persistDirty(ctx, true); err != nil {
		return fmt.Errorf("tap mark dirty off=%d len=%d: %w", off, length, err)
	}
	return nil
}

// DirtyRegions returns the regions written without journaling, merged and
// in disk order, with the generation to pass to ClearDirty.
func (t *Tap) DirtyRegions() ([]Region, uint64) { return t.dirty.Regions() }

// ClearDirty marks regs clean once a resync has copied them, except
// regions written again after gen (from DirtyRegions), and persists the
// map.
func (t *Tap) ClearDirty(ctx context.Context, regs []Region, gen uint64) error {
	t.dirty.Clear(regs, gen)
	if err := t.persistDirty(ctx, true); err != nil {
		return fmt.Errorf("clear dirty: %w", err)
	}
	return nil
}

// Resume leaves overflow mode: later writes are journaled again (and
// overflow again if the journal is still full). Regions already dirty
// stay dirty until ClearDirty. Resync typically calls Resume first, then
// copies DirtyRegions, then ClearDirty.
func (t *Tap) Resume(ctx context.Context) error {
	t.gate.Lock()
	defer t.gate.Unlock()
	t.mu.Lock()
	t.overflow = false
	t.mu.Unlock()
	if err := t.log.SetMeta(metaOverflow, []byte("0")); err != nil {
		return fmt.Errorf("resume journaling: %w", err)
	}
	return t.log.Sync(ctx)
}

// applier checkpoints every CheckpointEvery and when kicked.
func (t *Tap) applier(ctx context.Context) {
	defer t.wg.Done()
	var tick <-chan time.Time
	if t.opts.CheckpointEvery > 0 {
		tk := time.NewTicker(t.opts.CheckpointEvery)
		defer tk.Stop()
		tick = tk.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		case <-t.kick:
		}
		if t.checkpointReleasesNothing() {
			t.skipCheckpoint()
		} else if err := t.checkpoint(ctx, true); err != nil && ctx.Err() == nil {
			t.logger.Warn("checkpoint", logKeyErr, err)
		}
		if err := t.settle(t.syncedSeq.Load(), false); err != nil && ctx.Err() == nil {
			t.logger.Warn("activity log", logKeyErr, err)
		}
	}
}

// checkpointReleasesNothing reports whether another hold (replication
// behind the store) keeps every record that a checkpoint would let the
// apply hold pass: then the checkpoint's fdatasync of the store would
// free no journal space, only spend the disk's bandwidth (and stall the
// store writes on pages under writeback) while the journal keeps the
// records anyway. The applier skips such checkpoints; the first one after
// the other hold passes the apply hold's point runs, and Close,
// Checkpoint, a full journal and the first unjournaled write of an
// overflow (overflowBarrier) always checkpoint. So while replication
// lags the journal's unreleased tail is bounded by replication, not by
// the store, and a restart replays at most that tail (NewTap).
func (t *Tap) checkpointReleasesNothing() bool {
	t.mu.Lock()
	repairing := t.repairFrom != 0
	t.mu.Unlock()
	return !repairing && !t.applyIsLowestHold()
}

// skipCheckpoint ends a checkpoint the applier skipped: the writes that
// pace waits on go on.
func (t *Tap) skipCheckpoint() {
	t.cpMu.Lock()
	defer t.cpMu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sinceCP = 0
	close(t.cpDone)
	t.cpDone = make(chan struct{})
}

func (t *Tap) kickApplier() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// Checkpoint fdatasyncs the store and advances the apply hold to the last
// record the store holds, releasing journal records no other hold keeps.
// A store that refused a journaled write is repaired first (the journal
// replayed from that record with writes held off). The applier calls it
// periodically.
func (t *Tap) Checkpoint(ctx context.Context) error { return t.checkpoint(ctx, true) }

// checkpoint is Checkpoint; mayRepair is false on the write path, which
// holds the gate shared and so must not wait for it exclusively. The
// repair runs before cpMu is taken, so that a checkpoint from the write
// path never waits behind a repair that waits for that write.
func (t *Tap) checkpoint(ctx context.Context, mayRepair bool) error {
	if mayRepair {
		if err := t.repair(ctx); err != nil {
			return err
		}
	}
	t.cpMu.Lock()
	defer t.cpMu.Unlock()
	defer func() {
		t.mu.Lock()
		close(t.cpDone)
		t.cpDone = make(chan struct{})
		t.mu.Unlock()
	}()
	t.mu.Lock()
	w := t.log.Committed()
	for s := range t.inflight {
		w = min(w, s-1)
	}
	for s := range t.appending {
		w = min(w, s-1)
	}
	if t.repairFrom != 0 {
		w = min(w, t.repairFrom-1)
	}
	applied := t.applied
	t.sinceCP = 0
	t.mu.Unlock()
	if w <= applied {
		return nil
	}
	if err := t.store.Flush(ctx); err != nil {
		return fmt.Errorf("checkpoint to %d: %w", w, err)
	}
	if err := t.log.SetHold(HoldApply, w); err != nil {
		return fmt.Errorf("checkpoint to %d: %w", w, err)
	}
	t.mu.Lock()
	t.applied = max(t.applied, w)
	t.mu.Unlock()
	return nil
}

// repair replays the journal from the first record the store refused,
// with every write held off, so the store catches up with the journal.
func (t *Tap) repair(ctx context.Context) error {
	t.mu.Lock()
	from := t.repairFrom
	t.mu.Unlock()
	if from == 0 {
		return nil
	}
	t.gate.Lock()
	defer t.gate.Unlock()
	t.mu.Lock()
	from = t.repairFrom
	t.mu.Unlock()
	if from == 0 {
		return nil
	}
	if err := t.replay(ctx, from); err != nil {
		return fmt.Errorf("repair store from seq %d: %w", from, err)
	}
	t.mu.Lock()
	t.repairFrom = 0
	t.mu.Unlock()
	t.logger.Info("store repaired from journal", logKeySeq, from)
	return nil
}

// Close stops the applier, checkpoints a last time and syncs the journal.
// Writes after Close fail with ErrTapClosed. It closes neither the store
// nor the log.
func (t *Tap) Close(ctx context.Context) error {
	if t.closed.Swap(true) {
		return nil
	}
	t.cancel()
	t.wg.Wait()
	// Let writes in flight finish.
	t.gate.Lock()
	t.gate.Unlock() //nolint:staticcheck // an empty critical section waits for writers
	var errs []string
	if err := t.checkpoint(ctx, true); err != nil {
		errs = append(errs, err.Error())
	}
	if err := t.Flush(ctx); err != nil {
		errs = append(errs, err.Error())
	} else if err := t.settle(t.syncedSeq.Load(), true); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("close tap: %s", strings.Join(errs, "; "))
	}
	return nil
}
