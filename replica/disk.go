package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/nbd"
	"github.com/tandem-dr/tandem/replication"
)

// HoldRetention is the hold a replica keeps on its journal: records at or
// below it may be released. Release moves it; it never passes the point
// the store durably holds.
const HoldRetention = "retention"

// File names in a replica's directory and metadata keys in its journal.
const (
	storeFile        = "replica.img"
	stagingFile      = "staging.img"
	metaState        = "replica.state"
	metaStagedPrefix = "replica.staged."
)

// Defaults for zero Options fields.
const (
	// DefaultCheckpointEvery is how long records may stay applied to the
	// store without an fdatasync (they are durable in the journal; Open
	// replays them).
	DefaultCheckpointEvery = 30 * time.Second
	// DefaultCheckpointBytes of record data applied since the last
	// checkpoint trigger one early. It bounds what Open replays after a
	// crash and what Detach flushes before a failover; below it the
	// store's writeback is the kernel's, after the burst that caused it
	// (see openStore).
	DefaultCheckpointBytes = 1 << 30
)

var (
	// ErrClosed is returned by calls on a closed Disk.
	ErrClosed = errors.New("replica: closed")
	// ErrBroken is returned (wrapped with the cause) after a failure left
	// the store behind its journal; Close and Open again to recover.
	ErrBroken = errors.New("replica: store failed, reopen to recover")
	// ErrNoSync is returned by sync calls when no sync is in progress or
	// it is not at the stage the call needs.
	ErrNoSync = errors.New("replica: no sync in progress")
)

// Options configures Open. Zero fields take the Default values.
type Options struct {
	// Logger receives recovery at Open and syncs committed (Info). Nil
	// discards.
	Logger *slog.Logger
	// CheckpointEvery and CheckpointBytes bound how much of the journal
	// Open may have to replay into the store.
	CheckpointEvery time.Duration
	CheckpointBytes int64
}

// Disk is a replica disk on the secondary: the replication.Sink of one
// protected disk of a peer site, and the read-only NBD backend of its
// NAME@latest export. Create it with Open; Close it before closing its
// journal.
type Disk struct {
	dir    string
	log    *journal.Log
	size   int64
	opts   Options
	logger *slog.Logger
	fault  func(point string) error // test hook, see export_test.go

	rw    sync.RWMutex // store contents: readers shared, apply and commit exclusive
	store *disk.File

	mu        sync.Mutex // everything below; taken before rw
	closed    bool
	broken    error
	st        diskState
	head      replication.Position
	applied   uint64 // outside a sync: records applied to the store
	staging   *disk.File
	staged    []replication.Region // regions of the sync, in order
	persisted int                  // staged[:persisted] are in the journal's metadata
	chunks    int                  // staged chunks written for the sync
	sinceCP   int64
	lastCP    time.Time
	bgCP      chan struct{} // closed when the background checkpoint ends; nil when none runs
	applying  chan struct{} // closed when the Apply writing the store ends; nil when none does
	persists  uint64        // states persisted since Open: a background checkpoint persists only over the state it began from
	marker    Marker        // the newest marker applied since the Disk was opened
}

// Marker is a tagged recovery point that the replica holds: a marker
// record (a checkpoint cut at the primary), by its sequence number, its
// time on the primary's clock and its label.
type Marker struct {
	Seq   uint64
	Time  time.Time
	Label string
}

// NewestMarker returns the newest marker the store holds of those applied
// since the Disk was opened; ok is false when there is none.
func (d *Disk) NewestMarker() (m Marker, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.marker, d.marker.Seq != 0
}

var (
	_ replication.Recoverer    = (*Disk)(nil)
	_ replication.Sink         = (*Disk)(nil)
	_ replication.ChainChecker = (*Disk)(nil)
	_ nbd.Backend              = (*Disk)(nil)
	_ nbd.Extenter             = (*Disk)(nil)
)

// Open opens (creating when needed) the replica of a size-byte disk whose
// store and staging area live in dir and whose retention journal is log.
// It finishes what a crash interrupted: a commit whose intent was
// persisted is completed, a sync being set up is set up again, and
// records the store may lack are replayed. The Disk does not own log.
func Open(ctx context.Context, dir string, log *journal.Log, size int64, opts Options) (*Disk, error) {
	if size <= 0 {
		return nil, fmt.Errorf("open replica %s: size %d", dir, size)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.CheckpointEvery <= 0 {
		opts.CheckpointEvery = DefaultCheckpointEvery
	}
	if opts.CheckpointBytes <= 0 {
		opts.CheckpointBytes = DefaultCheckpointBytes
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open replica %s: %w", dir, err)
	}
	store, err := openStore(filepath.Join(dir, storeFile), size)
	if err != nil {
		return nil, fmt.Errorf("open replica %s: %w", dir, err)
	}
	d := &Disk{dir: dir, log: log, size: size, opts: opts, logger: opts.Logger, store: store, lastCP: time.Now()}
	if err := d.load(ctx); err != nil {
		d.closeFiles()
		return nil, fmt.Errorf("open replica %s: %w", dir, err)
	}
	return d, nil
}

// openStore opens (creating when needed) the replica store at path and
// checks that it is size bytes. The store is written through the page
// cache and fdatasynced only at checkpoints: the records are durable in
// the journal, which is what an acknowledgement waits for, so the
// store's share of the device can wait until the writes slow down. In
// sync mode on a device the journal shares, this is what lets the
// journal's appends keep up: interleaved runs (fio seq 1 MiB QD16, 4 s)
// measured 185 MB/s against 125 MB/s with the store's large writes
// O_DIRECT and checkpoints every 64 MiB, and async the same (485 against
// 457 MB/s). The cost is the page cache's copy of every replicated byte:
// profiled under async 1 MiB writes with O_DIRECT large writes, that copy
// had been nearly half the secondary's CPU.
func openStore(path string, size int64) (*disk.File, error) {
	store, err := disk.OpenFile(path, disk.FileOptions{Size: size})
	if err != nil {
		return nil, err
	}
	if store.Size() != size {
		store.Close()
		return nil, fmt.Errorf("store %s is %d bytes, want %d", path, store.Size(), size)
	}
	return store, nil
}

// load reads the persisted state and recovers from an interruption.
func (d *Disk) load(ctx context.Context) error {
	v, err := d.log.Meta(metaState)
	switch {
	case errors.Is(err, journal.ErrNotFound):
		// A new replica starts from zeroes, whatever an old file held.
		if err := d.store.Trim(0, d.size); err != nil {
			return fmt.Errorf("clear new replica store: %w", err)
		}
	case err != nil:
		return err
	default:
		if d.st, err = decodeState(v, d.size); err != nil {
			return err
		}
	}
	if _, ok := d.log.Holds()[HoldRetention]; !ok {
		base, _ := d.log.Base()
		if err := d.log.SetHold(HoldRetention, base); err != nil {
			return err
		}
	}
	if d.head, err = headPosition(ctx, d.log); err != nil {
		return err
	}
	if s := d.st.Sync; s != nil {
		if !d.st.Rebased {
			d.logger.Info("replica: setting up interrupted sync again", logKeySync, syncName(s.ID))
			if err := d.rebase(ctx); err != nil {
				return err
			}
		}
		if d.st.Committing {
			d.logger.Info("replica: completing interrupted sync commit", logKeySync, syncName(s.ID), logKeySeq, d.head.Seq)
			if err := d.readStaged(ctx); err != nil {
				return err
			}
			return d.finishCommit(ctx)
		}
		return d.loadStaging(ctx)
	}
	if err := d.dropStaging(); err != nil {
		return err
	}
	d.applied = d.st.Applied
	if !d.st.Initialized {
		return nil
	}
	if base, _ := d.log.Base(); d.st.Applied < base {
		return fmt.Errorf("%w: store holds seq=%d but the journal is released up to %d", ErrBadState, d.st.Applied, base)
	}
	n := 0
	err = d.log.ReadFrom(ctx, d.st.Applied+1, func(r journal.Record) error {
		if err := d.apply(r); err != nil {
			return err
		}
		d.applied = r.Seq
		n++
		return nil
	})
	if err != nil {
		return fmt.Errorf("replay journal into replica from seq=%d: %w", d.st.Applied+1, err)
	}
	if n > 0 {
		d.logger.Info("replica: journal replayed into store", "records", n, logKeySeq, d.applied)
	}
	return d.checkpoint(ctx)
}

// Size is the replica's size in bytes.
func (d *Disk) Size() int64 { return d.size }

// State returns the durable state: the head of the retention journal and
// the consistent point (the head outside a sync; the point the store holds
// during one).
func (d *Disk) State(ctx context.Context) (replication.SinkState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return replication.SinkState{}, err
	}
	st := replication.SinkState{Head: d.head, Initialized: d.st.Initialized}
	switch {
	case d.st.Sync != nil:
		s := *d.st.Sync
		st.Sync = &s
		st.Consistent = d.st.Applied
	case d.st.Initialized:
		st.Consistent = d.head.Seq
	}
	return st, nil
}

// usable reports why the disk cannot serve a call. d.mu held.
func (d *Disk) usable() error {
	if d.closed {
		return ErrClosed
	}
	if d.broken != nil {
		return fmt.Errorf("%w: %w", ErrBroken, d.broken)
	}
	return nil
}

// AppendReceived appends records to the retention journal, durably, and
// outside a sync applies them to the store in order, under the store's
// write lock, so readers see the replica before or after the whole batch:
// AppendDurable, then Apply. The store is fdatasynced at checkpoints;
// until then the journal is its write-ahead log. During a sync the
// records are only kept, for CommitSync. A store that fails to apply a
// journaled record breaks the Disk (ErrBroken) until it is reopened,
// which replays the journal.
func (d *Disk) AppendReceived(ctx context.Context, recs []journal.Record) error {
	if err := d.AppendDurable(ctx, recs); err != nil {
		return err
	}
	return d.Apply(ctx, recs)
}

// AppendDurable is AppendReceived's first half (replication's
// DeferredApplier): it appends the records, whose chain the receiver has
// verified, to the retention journal, durably. Once it returns they are
// the replica's head: a crash before Apply replays them into the store.
func (d *Disk) AppendDurable(ctx context.Context, recs []journal.Record) error {
	if len(recs) == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	first, last := recs[0], recs[len(recs)-1]
	if d.st.Sync == nil && !d.st.Initialized {
		return fmt.Errorf("append received seq=%d: %w before an initial sync", first.Seq, ErrNoSync)
	}
	if err := d.log.AppendVerified(ctx, recs); err != nil {
		if !errors.Is(err, journal.ErrCorrupt) {
			// Some records may have been committed (or still be): catch
			// the head and the store up with the journal.
			if rerr := d.catchUp(ctx); rerr != nil {
				d.broken = rerr
			}
		}
		return fmt.Errorf("replica: %w", err)
	}
	d.head = replication.Position{Seq: last.Seq, Sum: last.Sum}
	return nil
}

// RangesAfter returns the ranges that the records after the record
// `after` wrote, zeroed or trimmed; whole when records after it are no
// longer kept. It fails with replication.ErrNotAgreed unless the journal
// holds record after.Seq with sum after.Sum (as its base, or kept). See
// replication.RangeLister.
func (d *Disk) RangesAfter(ctx context.Context, after replication.Position) ([]replication.Region, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return nil, false, err
	}
	base, baseSum := d.log.Base()
	switch {
	case after.Seq > d.head.Seq:
		return nil, false, fmt.Errorf("%w: seq=%d is past the head seq=%d", replication.ErrNotAgreed, after.Seq, d.head.Seq)
	case after.Seq < base:
		return nil, false, fmt.Errorf("%w: seq=%d is released here (base seq=%d)", replication.ErrNotAgreed, after.Seq, base)
	case after.Seq == base && after.Sum != baseSum:
		return nil, false, fmt.Errorf("%w: seq=%d has sum %016x here, %016x at the primary", replication.ErrNotAgreed, after.Seq, baseSum, after.Sum)
	}
	var regions []replication.Region
	from := after.Seq + 1
	if after.Seq > base {
		from = after.Seq // check the agreed record itself first
	}
	err := d.log.ReadFrom(ctx, from, func(r journal.Record) error {
		if r.Seq > d.head.Seq {
			return errStopRead
		}
		if r.Seq == after.Seq {
			if r.Sum != after.Sum {
				return fmt.Errorf("%w: seq=%d has sum %016x here, %016x at the primary", replication.ErrNotAgreed, r.Seq, r.Sum, after.Sum)
			}
			return nil
		}
		switch r.Kind {
		case journal.KindWrite, journal.KindZero, journal.KindTrim:
			regions = append(regions, replication.Region{Off: r.Off, Len: r.Len})
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopRead) {
		return nil, false, fmt.Errorf("list ranges after seq=%d: %w", after.Seq, err)
	}
	return regions, false, nil
}

// errStopRead ends a journal read early.
var errStopRead = errors.New("stop reading")

// Apply is AppendReceived's second half: outside a sync it applies
// records appended with AppendDurable to the store (those it already
// holds are skipped; records appended before them but never applied are
// read back from the journal), and checkpoints when due. During a sync it
// does nothing: CommitSync applies them.
//
// Apply writes the store without holding the Disk's lock, so the next
// records' AppendDurable (the journal's write and fdatasync) runs while
// these are applied; calls that replace or close the store, or read the
// applied point to act on it, wait for it. It holds the store's lock
// exclusively one record at a time: a reader of the replica waits for at
// most one record's write, and sees the store after some record, in
// order.
func (d *Disk) Apply(ctx context.Context, recs []journal.Record) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitApply()
	if err := d.usable(); err != nil {
		return err
	}
	if d.st.Sync != nil {
		return nil
	}
	for len(recs) > 0 && recs[0].Seq <= d.applied {
		recs = recs[1:]
	}
	if len(recs) == 0 {
		return nil
	}
	last := recs[len(recs)-1].Seq
	if last > d.head.Seq {
		return fmt.Errorf("apply seq=%d..%d: the journal holds through seq=%d", recs[0].Seq, last, d.head.Seq)
	}
	done := make(chan struct{})
	d.applying = done
	run := applyRun{d: d, applied: d.applied, fault: d.fault}
	d.mu.Unlock()
	err := run.do(ctx, recs, last)
	d.mu.Lock()
	d.applying = nil
	close(done)
	d.applied = run.applied
	if run.marker.Seq != 0 {
		d.marker = run.marker
	}
	if run.broken != nil {
		d.broken = run.broken // the store no longer matches the journal
	}
	if err != nil {
		return err
	}
	d.sinceCP += run.bytes
	if d.sinceCP >= d.opts.CheckpointBytes || time.Since(d.lastCP) >= d.opts.CheckpointEvery {
		d.startCheckpoint(ctx)
	}
	return nil
}

// applyRun is one Apply's progress, kept outside the Disk's lock: the
// last record applied, the newest marker among them, the bytes written
// and the store's failure.
type applyRun struct {
	d       *Disk
	fault   func(point string) error // d.fault, taken under d.mu
	applied uint64
	marker  Marker
	bytes   int64
	broken  error
}

// do applies recs, which end at seq last, after run.applied; records
// between run.applied and recs[0] are read back from the journal.
func (run *applyRun) do(ctx context.Context, recs []journal.Record, last uint64) error {
	if recs[0].Seq == run.applied+1 {
		for _, r := range recs {
			if err := run.one(r); err != nil {
				return err
			}
		}
		return nil
	}
	// Records appended but never applied (a connection that ended
	// between the two): the journal has them, in order.
	err := run.d.log.ReadFrom(ctx, run.applied+1, func(r journal.Record) error {
		if r.Seq > last {
			return errStopRead
		}
		return run.one(r)
	})
	if errors.Is(err, errStopRead) {
		err = nil
	}
	if err == nil && run.applied < last {
		err = fmt.Errorf("apply through seq=%d: the journal ends at seq=%d", last, run.applied)
	}
	return err
}

// one applies record r under the store's write lock.
func (run *applyRun) one(r journal.Record) error {
	if r.Kind == journal.KindMarker {
		run.marker = markerOf(r)
	} else {
		var err error
		if run.fault != nil {
			err = run.fault(faultApplyRecord)
		}
		if err == nil {
			run.d.rw.Lock()
			err = run.d.write(r)
			run.d.rw.Unlock()
		}
		if err != nil {
			run.broken = fmt.Errorf("append received seq=%d: %w", r.Seq, err)
			return run.broken
		}
	}
	run.applied = r.Seq
	run.bytes += r.Len
	return nil
}

// startCheckpoint checkpoints the store through the records applied so
// far in the background, so that the next records are appended and
// applied while the store's fdatasync runs: the journal's O_DIRECT
// appends and the store's writeback overlap instead of taking turns. The
// fdatasync covers every store write that returned before it began, so
// the applied point taken now is durable once it returns. It does
// nothing while one runs; the checkpoint outlives ctx's cancellation.
// d.mu held.
func (d *Disk) startCheckpoint(ctx context.Context) {
	if d.bgCP != nil {
		return
	}
	ctx = context.WithoutCancel(ctx)
	d.sinceCP = 0
	d.lastCP = time.Now()
	if d.st.Sync != nil || !d.st.Initialized || d.applied == d.st.Applied {
		return
	}
	done := make(chan struct{})
	d.bgCP = done
	store, seq, gen := d.store, d.applied, d.persists
	go func() {
		err := store.Flush(ctx)
		d.mu.Lock()
		defer d.mu.Unlock()
		defer close(done)
		d.bgCP = nil
		switch {
		case err != nil:
			// The records are durable in the journal: report, don't fail.
			d.logger.Warn("replica: checkpoint", logKeySeq, seq, logKeyErr, err)
		case d.closed || d.broken != nil || d.store != store || d.persists != gen:
			// The Disk moved on (closed, or a sync or a checkpoint of its
			// own persisted a state): the flushed point is not the one to
			// persist over it.
		default:
			st := d.st
			st.Applied = seq
			if err := d.persist(ctx, st); err != nil {
				d.logger.Warn("replica: checkpoint", logKeySeq, seq, logKeyErr, err)
			}
		}
	}()
}

// waitIdle waits for the background checkpoint and the Apply in flight
// to end, so that the store can be closed or replaced and the applied
// point is the store's. d.mu held; it is released while waiting.
func (d *Disk) waitIdle() {
	for d.bgCP != nil || d.applying != nil {
		if d.bgCP != nil {
			waitUnlocked(&d.mu, d.bgCP)
		} else {
			d.waitApply()
		}
	}
}

// waitApply waits for the Apply in flight to end. d.mu held; it is
// released while waiting.
func (d *Disk) waitApply() {
	for d.applying != nil {
		waitUnlocked(&d.mu, d.applying)
	}
}

// waitUnlocked waits for done to close with mu, which the caller holds,
// released meanwhile.
func waitUnlocked(mu *sync.Mutex, done <-chan struct{}) {
	mu.Unlock()
	<-done
	mu.Lock()
}

// catchUp re-reads the head after a failed append, waiting for records
// still on their way to the journal, and outside a sync applies the
// records the store lacks. d.mu held.
func (d *Disk) catchUp(ctx context.Context) error {
	d.waitApply()
	for i := 0; d.log.Committed() != d.log.Head(); i++ {
		if i >= 10000 {
			return fmt.Errorf("catch up with the journal: records after seq=%d never committed", d.log.Committed())
		}
		if err := sleep(context.WithoutCancel(ctx), time.Millisecond); err != nil {
			return err
		}
	}
	head, err := headPosition(context.WithoutCancel(ctx), d.log)
	if err != nil {
		return err
	}
	d.head = head
	if d.st.Sync != nil || d.applied >= head.Seq {
		return nil
	}
	d.rw.Lock()
	defer d.rw.Unlock()
	err = d.log.ReadFrom(context.WithoutCancel(ctx), d.applied+1, func(r journal.Record) error {
		if err := d.apply(r); err != nil {
			return err
		}
		d.applied = r.Seq
		return nil
	})
	if err != nil {
		return fmt.Errorf("catch up with the journal from seq=%d: %w", d.applied+1, err)
	}
	return nil
}

// apply performs one record on the store (a marker becomes the newest
// marker). The caller holds d.mu, and rw exclusively or is Open.
func (d *Disk) apply(r journal.Record) error {
	if r.Kind == journal.KindMarker {
		d.marker = markerOf(r)
		return nil
	}
	return d.write(r)
}

// markerOf is the recovery point of marker record r.
func markerOf(r journal.Record) Marker {
	return Marker{Seq: r.Seq, Time: r.Time, Label: string(r.Data)}
}

// write performs one write, zero or trim record on the store. The caller
// holds rw exclusively, or is Open.
func (d *Disk) write(r journal.Record) error {
	if r.Off < 0 || r.Len < 0 || r.Off > d.size || r.Len > d.size-r.Off {
		return fmt.Errorf("apply seq=%d: range off=%d len=%d outside %d bytes", r.Seq, r.Off, r.Len, d.size)
	}
	var err error
	switch r.Kind {
	case journal.KindWrite:
		_, err = d.store.WriteAt(r.Data, r.Off)
	case journal.KindZero:
		err = d.store.Zero(r.Off, r.Len, true)
	case journal.KindTrim:
		err = d.store.Trim(r.Off, r.Len)
	default:
		err = fmt.Errorf("unknown record kind %d", r.Kind)
	}
	if err != nil {
		return fmt.Errorf("apply seq=%d: %w", r.Seq, err)
	}
	return nil
}

// checkpoint fdatasyncs the store and persists the applied point, outside
// a sync. d.mu held.
func (d *Disk) checkpoint(ctx context.Context) error {
	d.sinceCP = 0
	d.lastCP = time.Now()
	if d.st.Sync != nil || !d.st.Initialized || d.applied == d.st.Applied {
		return nil
	}
	if err := d.store.Flush(ctx); err != nil {
		return fmt.Errorf("checkpoint replica at seq=%d: %w", d.applied, err)
	}
	st := d.st
	st.Applied = d.applied
	return d.persist(ctx, st)
}

// persist writes st as the persisted state, durably, and adopts it.
// d.mu held.
func (d *Disk) persist(ctx context.Context, st diskState) error {
	d.persists++ // counts attempts too: a failed one may have written st
	if err := d.log.SetMeta(metaState, st.encode()); err != nil {
		return fmt.Errorf("persist replica state: %w", err)
	}
	if err := d.log.Sync(ctx); err != nil {
		return fmt.Errorf("persist replica state: %w", err)
	}
	d.st = st
	return nil
}

// Release lets the retention journal release its records up to upTo: the
// daemon's retention policy calls it with the oldest point it still wants.
// Records the store does not hold durably are kept whatever upTo says
// (they are replayed at Open), and during a sync nothing is released.
func (d *Disk) Release(ctx context.Context, upTo uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	_, err := d.releaseLocked(ctx, upTo, true)
	return err
}

// Expire releases the retention journal's records written before t (by
// the primary's clock, Record.Time) that the store holds durably: the
// daemon's retention policy calls it with now minus the disk's retention.
// Unlike Release it never syncs the store itself, so it never holds up the
// receiver: when records past the store's durable point have expired, it
// starts a background checkpoint, which lets a later call release them,
// rather than leave them to the next one Apply starts (up to
// CheckpointEvery later). During a sync nothing is released. It returns
// the journal's base.
func (d *Disk) Expire(ctx context.Context, t time.Time) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return 0, err
	}
	upTo := d.log.Before(t)
	if upTo > d.st.Applied {
		d.startCheckpoint(ctx)
	}
	return d.releaseLocked(ctx, upTo, false)
}

// releaseLocked moves the retention hold up to upTo, but not past what the
// store holds durably (checkpointing first when checkpoint is set and
// upTo is past it); during a sync it releases nothing. It returns the
// journal's base. d.mu held.
func (d *Disk) releaseLocked(ctx context.Context, upTo uint64, checkpoint bool) (uint64, error) {
	base, _ := d.log.Base()
	if d.st.Sync != nil {
		return base, nil
	}
	if checkpoint && upTo > d.st.Applied {
		if err := d.checkpoint(ctx); err != nil {
			return base, fmt.Errorf("release replica journal to seq=%d: %w", upTo, err)
		}
	}
	upTo = min(upTo, d.st.Applied)
	if upTo <= base {
		return base, nil
	}
	if err := d.log.SetHold(HoldRetention, upTo); err != nil {
		return base, fmt.Errorf("release replica journal to seq=%d: %w", upTo, err)
	}
	return upTo, nil
}

// ReadConsistent reads the replica at its consistent point (for verify):
// the store, which is there whenever nothing appended awaits Apply, as
// when the receiver serves a verify request.
func (d *Disk) ReadConsistent(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if off < 0 || off > d.size || int64(len(p)) > d.size-off {
		return fmt.Errorf("read replica off=%d len=%d: %w", off, len(p), disk.ErrOutOfRange)
	}
	d.rw.RLock()
	defer d.rw.RUnlock()
	if d.store == nil {
		return ErrClosed
	}
	if _, err := d.store.ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read replica off=%d len=%d: %w", off, len(p), err)
	}
	return nil
}

// ReadAt reads the replica at its consistent point: the NBD backend of
// NAME@latest. A read sees the store as of some record, in the
// primary's write order: never a later write without every earlier one,
// part of a record, or part of a sync.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	d.rw.RLock()
	defer d.rw.RUnlock()
	if d.store == nil {
		return 0, ErrClosed
	}
	return d.store.ReadAt(p, off)
}

// WriteAt fails with disk.ErrReadOnly: a replica is written only by
// replication.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("write replica off=%d len=%d: %w", off, len(p), disk.ErrReadOnly)
}

// Extents describes the replica store's allocation.
func (d *Disk) Extents(off, length int64) ([]nbd.Extent, error) {
	d.rw.RLock()
	defer d.rw.RUnlock()
	if d.store == nil {
		return nil, ErrClosed
	}
	return d.store.Extents(off, length)
}

// CheckChain verifies the chained checksum of every record the retention
// journal keeps and returns the last seq checked (the base when it keeps
// none).
func (d *Disk) CheckChain(ctx context.Context) (uint64, error) {
	through, _ := d.log.Base()
	err := d.log.ReadFrom(ctx, 0, func(r journal.Record) error {
		through = r.Seq
		return nil
	})
	if err != nil {
		return through, fmt.Errorf("check replica journal chain: %w", err)
	}
	return through, nil
}

// Store returns the replica store, for promotion at failover. It holds the
// replica at the consistent point; it is replaced by the commit of a full
// sync, so take it while no sync runs (the Disk's Sender is stopped).
// The Disk still owns it: Close closes it.
func (d *Disk) Store() *disk.File {
	d.rw.RLock()
	defer d.rw.RUnlock()
	return d.store
}

// StorePath is the replica store's file: the disk to promote at failover
// once the Disk is closed.
func (d *Disk) StorePath() string { return filepath.Join(d.dir, storeFile) }

// Detach closes the Disk but hands its store over, open, to the caller:
// the promotion of a replica at failover. The store holds the replica at
// the consistent point, durably (outside a sync it is checkpointed first;
// during one it is the point before the sync, which stays unfinished in
// the persisted state). The Disk must no longer be driven by a receiver.
func (d *Disk) Detach(ctx context.Context) (*disk.File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitIdle()
	if err := d.usable(); err != nil {
		return nil, err
	}
	if err := d.checkpoint(ctx); err != nil {
		return nil, fmt.Errorf("detach replica store: %w", err)
	}
	if d.staging != nil {
		if err := d.staging.Close(); err != nil {
			return nil, fmt.Errorf("detach replica store: %w", err)
		}
		d.staging = nil
	}
	d.closed = true
	d.rw.Lock()
	f := d.store
	d.store = nil
	d.rw.Unlock()
	return f, nil
}

// Recover brings a broken Disk back without closing it: it closes the
// store and staging files and opens them again as Open does, which
// finishes what the failure interrupted (a sync's commit or set-up) and
// replays the records the store lacks. It does nothing on a sound Disk,
// and a Disk it cannot recover stays broken, by the new cause. The
// replication Server calls it (replication.Recoverer) for each
// connection of the primary, so a replica heals without a restart. Readers
// of the replica may see the store mid-replay, as they may while it is
// broken.
func (d *Disk) Recover(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitIdle()
	if d.closed {
		return ErrClosed
	}
	if d.broken == nil {
		return nil
	}
	cause := d.broken
	if err := d.closeFiles(); err != nil {
		d.logger.Warn("replica: close files of a broken replica", logKeyErr, err)
	}
	store, err := openStore(filepath.Join(d.dir, storeFile), d.size)
	if err != nil {
		d.broken = err
		return fmt.Errorf("recover replica %s: %w", d.dir, err)
	}
	d.rw.Lock()
	d.store = store
	d.rw.Unlock()
	d.broken, d.st, d.head, d.applied = nil, diskState{}, replication.Position{}, 0
	d.staged, d.persisted, d.chunks, d.sinceCP, d.lastCP = nil, 0, 0, 0, time.Now()
	if err := d.load(ctx); err != nil {
		d.broken = err
		return fmt.Errorf("recover replica %s: %w", d.dir, err)
	}
	d.logger.Warn("replica: recovered from a failure", "cause", cause.Error(), logKeySeq, d.head.Seq)
	return nil
}

// Close checkpoints the store (outside a sync) and closes the store and
// staging files. It does not close the journal. Calls after Close fail
// with ErrClosed.
func (d *Disk) Close(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitIdle()
	if d.closed {
		return nil
	}
	var errs []error
	if d.broken == nil {
		errs = append(errs, d.checkpoint(ctx))
	}
	d.closed = true
	errs = append(errs, d.closeFiles())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close replica %s: %w", d.dir, err)
	}
	return nil
}

// closeFiles closes the store and staging files.
func (d *Disk) closeFiles() error {
	var errs []error
	if d.staging != nil {
		errs = append(errs, d.staging.Close())
		d.staging = nil
	}
	d.rw.Lock()
	if d.store != nil {
		errs = append(errs, d.store.Close())
		d.store = nil
	}
	d.rw.Unlock()
	return errors.Join(errs...)
}

func syncName(id uint64) string { return fmt.Sprintf("%016x", id) }
