package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replication"
)

// HoldReplication is the journal hold a protected disk's journal carries:
// records at or below it are on the secondary, consistently and durably.
const HoldReplication = "replication"

// SyncMarker labels the marker record StartSync appends as a sync's Base.
const SyncMarker = "tandem:sync"

// ErrNotProtected is returned by NewSource and Source.Acked for a journal
// without the replication hold.
var ErrNotProtected = errors.New("replica: disk not protected")

// Log attribute keys.
const (
	logKeySeq  = "seq"
	logKeyErr  = "err"
	logKeySync = "sync"
)

// Protect creates the replication hold on a primary disk's journal at its
// committed head, durably, so that from now on no record after it is
// released before the secondary acknowledges it. Call it before the first
// NewSource of the disk (and so before its Sender starts); protecting a
// protected journal does nothing.
func Protect(ctx context.Context, log *journal.Log) error {
	if Protected(log) {
		return nil
	}
	if err := log.SetHold(HoldReplication, log.Committed()); err != nil {
		return fmt.Errorf("protect %s: %w", log.Name(), err)
	}
	if err := log.Sync(ctx); err != nil {
		return fmt.Errorf("protect %s: %w", log.Name(), err)
	}
	return nil
}

// Protected reports whether log carries the replication hold.
func Protected(log *journal.Log) bool {
	_, ok := log.Holds()[HoldReplication]
	return ok
}

// Unprotect removes the replication hold, which lets the tap's
// checkpoints release what it kept, and takes the tap out of overflow
// mode so that writes are journaled again. Dirty marks stay: a later
// Protect to a replica that is behind resyncs them. Close the disk's
// Sender first: an Acked after Unprotect fails with ErrNotProtected.
func Unprotect(ctx context.Context, tap *disk.Tap, log *journal.Log) error {
	if err := log.RemoveHold(HoldReplication); err != nil {
		return fmt.Errorf("unprotect %s: %w", log.Name(), err)
	}
	if err := tap.DisableActivityLog(ctx); err != nil {
		return fmt.Errorf("unprotect %s: %w", log.Name(), err)
	}
	if err := log.Sync(ctx); err != nil {
		return fmt.Errorf("unprotect %s: %w", log.Name(), err)
	}
	if tap.Overflowed() {
		if err := tap.Resume(ctx); err != nil {
			return fmt.Errorf("unprotect %s: %w", log.Name(), err)
		}
	}
	return nil
}

// SourceOptions configures a Source.
type SourceOptions struct {
	// Logger receives syncs planned (Info) and dirty regions cleared
	// (Debug). Nil discards.
	Logger *slog.Logger
}

// Source is a protected primary disk as replication.Source: records from
// its journal, reads from its store through the tap, and dirty-region
// tracking after journal overflow. It does not own the tap or the log.
// While it exists it owns the tap's overflow state: nothing else may call
// the tap's Resume or ClearDirty.
type Source struct {
	tap    *disk.Tap
	log    *journal.Log
	logger *slog.Logger

	mu    sync.Mutex
	plans []syncPlan // planned syncs whose Base was not yet acknowledged, in order
}

// syncPlan is what Acked needs of a planned sync: its Base and the dirty
// regions (up to generation gen) it covered.
type syncPlan struct {
	base    uint64
	gen     uint64
	regions []disk.Region
}

var (
	_ replication.Source         = (*Source)(nil)
	_ replication.Backlogger     = (*Source)(nil)
	_ replication.RecordAppender = (*Source)(nil)
)

// NewSource presents tap and its journal log as a replication.Source. The
// journal must carry the replication hold (Protect); otherwise it fails
// with ErrNotProtected.
func NewSource(tap *disk.Tap, log *journal.Log, opts SourceOptions) (*Source, error) {
	if !Protected(log) {
		return nil, fmt.Errorf("new replication source %s: %w", log.Name(), ErrNotProtected)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	// A power cut must not leave the store with writes the secondary
	// never gets: the tap marks the regions it writes durably first
	// (disk/activity.go), and after a crash resyncs them.
	tap.EnableActivityLog(HoldReplication)
	return &Source{tap: tap, log: log, logger: opts.Logger}, nil
}

// Size is the disk's size.
func (s *Source) Size() int64 { return s.tap.Size() }

// Head is the newest committed record of the journal: every write whose
// data the store holds is in a record at or before it, or dirty (the tap
// commits a record before it writes the store).
func (s *Source) Head(ctx context.Context) (replication.Position, error) {
	return headPosition(ctx, s.log)
}

// NeedsResync reports whether the disk holds writes that no kept record
// carries and no acknowledged sync covered: the tap overflowed, or dirty
// regions are not cleared yet.
func (s *Source) NeedsResync() bool { return s.tap.NeedsResync() }

// Agreed returns the record the replication hold names (the last one the
// secondary acknowledged), or the journal's head when the hold is past
// it; ok is false while the hold is at 0. See replication.Reconciler.
func (s *Source) Agreed(ctx context.Context) (replication.Position, bool, error) {
	seq, ok := s.log.Holds()[HoldReplication]
	if !ok || seq == 0 {
		return replication.Position{}, false, nil
	}
	// A crash can leave the hold durable past the journal's durable head
	// (the secondary acknowledged records this journal then lost): the
	// secondary holds every record this journal kept up to the hold.
	seq = min(seq, s.log.Head())
	base, baseSum := s.log.Base()
	switch {
	case seq == base:
		return replication.Position{Seq: seq, Sum: baseSum}, true, nil
	case seq < base:
		return replication.Position{}, false, fmt.Errorf("agreed point: replication hold seq=%d below the journal base seq=%d", seq, base)
	}
	var p replication.Position
	err := s.log.ReadViews(ctx, seq, func(r journal.Record) error {
		p = replication.Position{Seq: r.Seq, Sum: r.Sum}
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		return replication.Position{}, false, fmt.Errorf("agreed point: read seq=%d: %w", seq, err)
	}
	if p.Seq != seq {
		return replication.Position{}, false, fmt.Errorf("agreed point: seq=%d not in the journal", seq)
	}
	return p, true, nil
}

// MarkDirty marks the regions dirty in the tap, durably. See
// replication.Reconciler.
func (s *Source) MarkDirty(ctx context.Context, regions []replication.Region) error {
	for _, r := range regions {
		if err := s.tap.MarkDirty(ctx, r.Off, r.Len); err != nil {
			return err
		}
	}
	return nil
}

// ReadFrom calls fn with the committed records from seq from onwards,
// verified, as views (see journal.Log.ReadViews): fn keeps nothing.
// Released records, and records after a gap of unjournaled writes that no
// planned sync covers, are refused with an error wrapping
// replication.ErrTruncated (and journal.ErrReleased when released).
func (s *Source) ReadFrom(ctx context.Context, from uint64, fn func(journal.Record) error) error {
	if err := s.readable(from); err != nil {
		return err
	}
	return truncated(s.log.ReadViews(ctx, from, fn)) // fn keeps nothing: no copies
}

// AppendRecords reads the journal's records from seq from onwards into
// buf, whose stored form is their wire form (see
// replication.RecordAppender).
func (s *Source) AppendRecords(ctx context.Context, from uint64, buf []byte, limit int, fn func(journal.Record) error) ([]byte, error) {
	if err := s.readable(from); err != nil {
		return buf, err
	}
	buf, err := s.log.AppendViews(ctx, from, buf, limit, fn)
	return buf, truncated(err)
}

// readable returns an error wrapping replication.ErrTruncated when the
// records from seq from onwards miss writes (the journal overflowed into
// dirty-region tracking after from and no planned sync covers them).
func (s *Source) readable(from uint64) error {
	if s.tap.NeedsResync() && !s.covered(from) {
		return fmt.Errorf("read journal %s from seq=%d: writes not journaled since: %w", s.log.Name(), from, replication.ErrTruncated)
	}
	return nil
}

// truncated wraps a journal's ErrReleased in replication.ErrTruncated:
// records the Sender needs are gone, and it resyncs.
func truncated(err error) error {
	if errors.Is(err, journal.ErrReleased) {
		return fmt.Errorf("%w: %w", replication.ErrTruncated, err)
	}
	return err
}

// covered reports whether records from seq from onwards follow the Base
// of the newest planned sync: the sync's regions cover the writes the
// journal lacks before them.
func (s *Source) covered(from uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.plans) > 0 && from > s.plans[len(s.plans)-1].base
}

// WaitAfter returns once a record after seq is committed.
func (s *Source) WaitAfter(ctx context.Context, seq uint64) error {
	return s.log.WaitAfter(ctx, seq)
}

// Acked moves the replication hold to seq, which releases the records at
// or below it that the tap has applied, and clears the dirty regions of
// the newest planned sync whose Base is at most seq (only a committed sync
// takes the secondary past a Base: see StartSync).
func (s *Source) Acked(ctx context.Context, seq uint64) error {
	if !Protected(s.log) {
		return fmt.Errorf("acknowledge seq=%d on %s: %w", seq, s.log.Name(), ErrNotProtected)
	}
	if err := s.log.SetHold(HoldReplication, seq); err != nil {
		return fmt.Errorf("acknowledge seq=%d: %w", seq, err)
	}
	s.mu.Lock()
	var done *syncPlan
	n := 0
	for n < len(s.plans) && s.plans[n].base <= seq {
		done = &s.plans[n]
		n++
	}
	var p syncPlan
	if done != nil {
		p = *done
	}
	s.plans = append(s.plans[:0], s.plans[n:]...)
	s.mu.Unlock()
	if done == nil || len(p.regions) == 0 {
		return nil
	}
	if err := s.tap.ClearDirty(ctx, p.regions, p.gen); err != nil {
		return fmt.Errorf("acknowledge seq=%d: %w", seq, err)
	}
	s.logger.Debug("replica: dirty regions resynchronised", logKeySeq, seq, "regions", len(p.regions))
	return nil
}

// SyncCommitted clears the dirty regions the committed plan p covered
// (marks made after the plan stay) and forgets the plans up to it. Acked
// passing p's Base clears them too (see StartSync); whichever comes first
// does it.
func (s *Source) SyncCommitted(ctx context.Context, p replication.SyncPlan) error {
	s.mu.Lock()
	regions := []disk.Region(nil)
	found := false
	n := 0
	for n < len(s.plans) && s.plans[n].base <= p.Base.Seq {
		if s.plans[n].base == p.Base.Seq && s.plans[n].gen == p.Gen {
			regions, found = s.plans[n].regions, true
		}
		n++
	}
	if found {
		s.plans = append(s.plans[:0], s.plans[n:]...)
	}
	s.mu.Unlock()
	if !found {
		// Not planned by this Source (or already cleared by Acked): the
		// plan's own regions cover its dirty marks.
		for _, r := range p.Regions {
			regions = append(regions, disk.Region{Off: r.Off, Len: r.Len})
		}
	}
	if len(regions) == 0 {
		return nil
	}
	if err := s.tap.ClearDirty(ctx, regions, p.Gen); err != nil {
		return fmt.Errorf("sync committed at base seq=%d: %w", p.Base.Seq, err)
	}
	return nil
}

// StartSync plans a sync. It appends a SyncMarker record (the plan's Base
// is at or after it, so the secondary, whose head is before it, reaches
// the Base only by committing this sync), reads the Base, waits for the
// tap's writes in flight and takes it out of overflow mode, and plans: for a full sync the store's allocated extents; for a
// resync the dirty regions plus the ranges of the kept records in
// (after, Base], or the whole disk when records after `after` were
// released. Dirty marks stay until Acked passes the Base.
func (s *Source) StartSync(ctx context.Context, full bool, after uint64) (replication.SyncPlan, error) {
	if err := s.appendMarker(ctx); err != nil {
		return replication.SyncPlan{}, err
	}
	base, err := s.Head(ctx)
	if err != nil {
		return replication.SyncPlan{}, fmt.Errorf("plan sync: %w", err)
	}
	// Resume waits for every write in flight, so each write journaled at
	// or before base is in the store before the extents are read, and
	// each unjournaled one is marked dirty; it also leaves overflow mode.
	if err := s.tap.Resume(ctx); err != nil {
		return replication.SyncPlan{}, fmt.Errorf("plan sync: %w", err)
	}
	dirty, gen := s.tap.DirtyRegions()
	plan := replication.SyncPlan{Base: base, Gen: gen}
	if full {
		plan.Regions, err = s.allocated()
		if err != nil {
			return replication.SyncPlan{}, fmt.Errorf("plan full sync: %w", err)
		}
	} else {
		for _, r := range dirty {
			plan.Regions = append(plan.Regions, replication.Region{Off: r.Off, Len: r.Len})
		}
		kept, whole, err := s.recordRanges(ctx, after, base.Seq)
		if err != nil {
			return replication.SyncPlan{}, fmt.Errorf("plan resync after seq=%d: %w", after, err)
		}
		if whole {
			plan.Regions = []replication.Region{{Off: 0, Len: s.tap.Size()}}
		} else {
			plan.Regions = append(plan.Regions, kept...)
		}
	}
	s.mu.Lock()
	s.plans = append(s.plans, syncPlan{base: base.Seq, gen: gen, regions: dirty})
	s.mu.Unlock()
	s.logger.Info("replica: sync planned", "full", full, "after", after, "base", base.Seq,
		"dirty_regions", len(dirty), "regions", len(plan.Regions))
	return plan, nil
}

// appendMarker appends and commits a SyncMarker record. On a full journal
// it appends the marker past the limit (AppendReceived is not bounded),
// which needs the head to hold still: in overflow mode the tap appends
// nothing.
func (s *Source) appendMarker(ctx context.Context) error {
	rec := journal.Record{Kind: journal.KindMarker, Data: []byte(SyncMarker)}
	p, err := s.log.Append(ctx, rec)
	if err == nil {
		if err := p.Wait(ctx); err != nil {
			return fmt.Errorf("append sync marker: %w", err)
		}
		return nil
	}
	if !errors.Is(err, journal.ErrFull) {
		return fmt.Errorf("append sync marker: %w", err)
	}
	for attempt := 0; ; attempt++ {
		if attempt >= 10000 {
			return fmt.Errorf("append sync marker past the journal limit: the head kept moving")
		}
		if s.log.Committed() != s.log.Head() {
			if err := sleep(ctx, time.Millisecond); err != nil {
				return fmt.Errorf("append sync marker: %w", err)
			}
			continue
		}
		head, err := s.Head(ctx)
		if err != nil {
			return fmt.Errorf("append sync marker: %w", err)
		}
		r := journal.Record{Seq: head.Seq + 1, Time: time.Now().UTC(), Kind: journal.KindMarker, Data: []byte(SyncMarker)}
		r.Seal(head.Sum)
		err = s.log.AppendReceived(ctx, []journal.Record{r})
		if err == nil {
			return nil
		}
		if !errors.Is(err, journal.ErrCorrupt) {
			return fmt.Errorf("append sync marker past the journal limit: %w", err)
		}
		// A record was appended meanwhile; try again on the new head.
	}
}

// allocated lists the store's allocated extents.
func (s *Source) allocated() ([]replication.Region, error) {
	var out []replication.Region
	size := s.tap.Size()
	for off := int64(0); off < size; {
		ext, err := s.tap.Extents(off, size-off)
		if err != nil {
			return nil, err
		}
		if len(ext) == 0 {
			return nil, fmt.Errorf("extents at off=%d: none returned", off)
		}
		for _, e := range ext {
			if e.Length <= 0 {
				return nil, fmt.Errorf("extents at off=%d: length %d", off, e.Length)
			}
			if !e.Hole {
				if n := len(out); n > 0 && out[n-1].End() == off {
					out[n-1].Len += e.Length
				} else {
					out = append(out, replication.Region{Off: off, Len: e.Length})
				}
			}
			off += e.Length
		}
	}
	return out, nil
}

// recordRanges returns the ranges of the records in (after, upTo]; whole
// is true when some of them were released.
func (s *Source) recordRanges(ctx context.Context, after, upTo uint64) (rs []replication.Region, whole bool, err error) {
	if after >= upTo {
		return nil, false, nil
	}
	err = s.log.ReadFrom(ctx, after+1, func(r journal.Record) error {
		if r.Seq > upTo {
			return errStop
		}
		if r.Kind == journal.KindMarker || r.Len == 0 {
			return nil
		}
		if n := len(rs); n > 0 && r.Off >= rs[n-1].Off && r.Off <= rs[n-1].End() {
			rs[n-1].Len = max(rs[n-1].End(), r.Off+r.Len) - rs[n-1].Off
			return nil
		}
		rs = append(rs, replication.Region{Off: r.Off, Len: r.Len})
		return nil
	})
	switch {
	case errors.Is(err, journal.ErrReleased):
		return nil, true, nil
	case err != nil && !errors.Is(err, errStop):
		return nil, false, err
	}
	return rs, false, nil
}

// Backlog counts the committed records after seq exactly and estimates
// their bytes as their share of the journal's unreleased bytes (headers
// included): the journal keeps no per-record sizes it could sum cheaply.
func (s *Source) Backlog(ctx context.Context, after uint64) (records, bytes uint64, err error) {
	head := s.log.Committed()
	if head <= after {
		return 0, 0, nil
	}
	base, _ := s.log.Base()
	records = head - after
	kept := s.log.Bytes()
	if n := s.log.Head() - base; n > 0 && kept > 0 {
		bytes = uint64(float64(kept) * float64(min(records, n)) / float64(n))
	}
	return records, bytes, nil
}

// ReadAt reads the current store through the tap.
func (s *Source) ReadAt(p []byte, off int64) (int, error) { return s.tap.ReadAt(p, off) }

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
