package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replication"
)

// copyChunk is the unit CommitSync copies staged regions in.
const copyChunk = 1 << 20

// Fault points of CommitSync, in order, and of Apply (see
// export_test.go).
const (
	faultIntent      = "commit:intent"  // the intent is persisted
	faultCopied      = "commit:copied"  // staged regions are in the store
	faultApplied     = "commit:applied" // records applied, store synced
	faultApplyRecord = "apply:record"   // Apply is about to write a record
)

// BeginSync starts a sync, durably, discarding any sync in progress: its
// staged regions and its records. The store keeps the consistent point
// (made durable first). The retention journal is rebased on info.Base:
// its records are released (they cannot continue into the sync's chain)
// and the next record must be Base+1. That fails while another hold than
// HoldRetention keeps records.
func (d *Disk) BeginSync(ctx context.Context, info replication.SyncInfo) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitApply()
	if err := d.usable(); err != nil {
		return err
	}
	if d.st.Sync == nil {
		if err := d.checkpoint(ctx); err != nil {
			return fmt.Errorf("begin sync %s: %w", syncName(info.ID), err)
		}
	}
	if d.staging != nil {
		if err := d.staging.Close(); err != nil {
			return fmt.Errorf("begin sync %s: close staging: %w", syncName(info.ID), err)
		}
		d.staging = nil
	}
	consistent := d.st.Applied
	if info.Rewind && info.After < consistent {
		// The store holds records past After that the primary lost; the
		// sync's regions cover them, and until it commits the store is
		// consistent only as of After.
		consistent = info.After
	}
	s := info
	s.Rewind, s.After = false, 0
	s.CopiedThrough, s.Ended, s.End = 0, false, replication.Position{}
	// Persist the new sync first: a crash from here on finds a sync with
	// nothing copied, which Open sets up again from scratch.
	if err := d.persist(ctx, diskState{Initialized: d.st.Initialized, Applied: consistent, Sync: &s}); err != nil {
		return fmt.Errorf("begin sync %s: %w", syncName(info.ID), err)
	}
	// From here a failure leaves a sync persisted but not set up: Open
	// sets it up again.
	if err := d.rebase(ctx); err != nil {
		d.broken = err
		return fmt.Errorf("begin sync %s: %w", syncName(info.ID), err)
	}
	if err := d.loadStaging(ctx); err != nil {
		d.broken = err
		return fmt.Errorf("begin sync %s: %w", syncName(info.ID), err)
	}
	return nil
}

// rebase releases the journal's records and rebases it on the sync's
// Base, then persists that it did. Idempotent. d.mu held.
func (d *Disk) rebase(ctx context.Context) error {
	base := d.st.Sync.Base
	if err := d.log.SetHold(HoldRetention, d.log.Head()); err != nil {
		return fmt.Errorf("release journal before sync: %w", err)
	}
	if b, _ := d.log.Base(); b != d.log.Head() {
		return fmt.Errorf("release journal before sync: records after seq=%d kept by holds %v", b, d.log.Holds())
	}
	if err := d.log.Rebase(ctx, base.Seq, base.Sum); err != nil {
		return err
	}
	if err := d.log.SetHold(HoldRetention, base.Seq); err != nil {
		return fmt.Errorf("rebase journal on seq=%d: %w", base.Seq, err)
	}
	st := d.st
	st.Rebased = true
	if err := d.persist(ctx, st); err != nil {
		return err
	}
	d.head = base
	return nil
}

// loadStaging opens the sync's staging file and loads its staged region
// list: a fresh sparse file and no regions when nothing was copied
// durably, or the regions below CopiedThrough. d.mu held.
func (d *Disk) loadStaging(ctx context.Context) error {
	s := d.st.Sync
	path := filepath.Join(d.dir, stagingFile)
	if s.CopiedThrough == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("reset staging: %w", err)
		}
	} else if _, err := os.Stat(path); err != nil {
		// Staged regions are gone: copy again from the start.
		d.logger.Warn("replica: staging file lost, sync copies again", logKeySync, syncName(s.ID), logKeyErr, err)
		st := d.st
		c := *s
		c.CopiedThrough = 0
		st.Sync = &c
		if err := d.persist(ctx, st); err != nil {
			return err
		}
	}
	f, err := disk.OpenFile(path, disk.FileOptions{Size: d.size, DirectWrites: true})
	if err != nil {
		return err
	}
	d.staging = f
	return d.readStaged(ctx)
}

// readStaged loads the sync's staged region list from the journal's
// metadata and deletes every other list. Regions past CopiedThrough (a
// SyncProgress whose state did not make it) are dropped and the list
// rewritten: the copy resumes from CopiedThrough. d.mu held.
func (d *Disk) readStaged(ctx context.Context) error {
	s := d.st.Sync
	d.staged, d.persisted, d.chunks = nil, 0, 0
	chunks, err := d.log.MetaPrefix(metaStagedPrefix)
	if err != nil {
		return err
	}
	prefix := syncName(s.ID) + "."
	var keys []string
	for k := range chunks {
		if strings.HasPrefix(k, prefix) && s.CopiedThrough > 0 {
			keys = append(keys, k)
			continue
		}
		if err := d.log.DeleteMeta(metaStagedPrefix + k); err != nil {
			return err
		}
	}
	sort.Strings(keys)
	clipped := false
	for _, k := range keys {
		rs, err := decodeRegions(chunks[k], d.size)
		if err != nil {
			return err
		}
		for _, r := range rs {
			if n := len(d.staged); n > 0 && r.Off < d.staged[n-1].End() {
				return fmt.Errorf("%w: staged region off=%d overlaps the one before", ErrBadState, r.Off)
			}
			if r.End() > s.CopiedThrough {
				clipped = true
				if r.Off >= s.CopiedThrough {
					continue
				}
				r.Len = s.CopiedThrough - r.Off
			}
			d.staged = append(d.staged, r)
		}
	}
	if !clipped {
		d.persisted, d.chunks = len(d.staged), len(keys)
		return nil
	}
	for _, k := range keys {
		if err := d.log.DeleteMeta(metaStagedPrefix + k); err != nil {
			return err
		}
	}
	if err := d.persistStaged(ctx); err != nil {
		return err
	}
	return d.log.Sync(ctx)
}

// persistStaged writes the staged regions not yet persisted as the next
// chunk. The caller syncs the journal. d.mu held.
func (d *Disk) persistStaged(ctx context.Context) error {
	if d.persisted == len(d.staged) {
		return nil
	}
	key := fmt.Sprintf("%s%s.%08d", metaStagedPrefix, syncName(d.st.Sync.ID), d.chunks)
	if err := d.log.SetMeta(key, encodeRegions(d.staged[d.persisted:])); err != nil {
		return fmt.Errorf("persist staged regions: %w", err)
	}
	d.persisted = len(d.staged)
	d.chunks++
	return nil
}

// dropStaging removes the staging file and every staged region list,
// outside a sync. d.mu held.
func (d *Disk) dropStaging() error {
	if d.staging != nil {
		if err := d.staging.Close(); err != nil {
			return fmt.Errorf("close staging: %w", err)
		}
		d.staging = nil
	}
	if err := os.Remove(filepath.Join(d.dir, stagingFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove staging: %w", err)
	}
	chunks, err := d.log.MetaPrefix(metaStagedPrefix)
	if err != nil {
		return err
	}
	for k := range chunks {
		if err := d.log.DeleteMeta(metaStagedPrefix + k); err != nil {
			return err
		}
	}
	d.staged, d.persisted, d.chunks = nil, 0, 0
	return nil
}

// stage checks a region of the sync and adds it to the staged list.
// d.mu held.
func (d *Disk) stage(op string, off, length int64) error {
	if err := d.usable(); err != nil {
		return err
	}
	s := d.st.Sync
	if s == nil || s.Ended || d.staging == nil {
		return fmt.Errorf("%s off=%d len=%d: %w", op, off, length, ErrNoSync)
	}
	if off < 0 || length <= 0 || off > d.size || length > d.size-off {
		return fmt.Errorf("%s off=%d len=%d: %w", op, off, length, disk.ErrOutOfRange)
	}
	n := len(d.staged)
	if n > 0 && off < d.staged[n-1].End() {
		return fmt.Errorf("%s off=%d: before the previous region's end %d", op, off, d.staged[n-1].End())
	}
	if n > d.persisted && d.staged[n-1].End() == off {
		d.staged[n-1].Len += length
		return nil
	}
	d.staged = append(d.staged, replication.Region{Off: off, Len: length})
	return nil
}

// WriteRegion stages data at off in the staging file. It is durable after
// the next SyncProgress.
func (d *Disk) WriteRegion(ctx context.Context, off int64, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.stage("stage region", off, int64(len(data))); err != nil {
		return err
	}
	// The staging file shares the journal's file system: its writes
	// keep off the space the journal keeps free for badger.
	if err := d.log.Admit(int64(len(data))); err != nil {
		d.staged = d.staged[:d.persisted]
		return fmt.Errorf("stage region off=%d len=%d: %w", off, len(data), err)
	}
	if _, err := d.staging.WriteAt(data, off); err != nil {
		d.staged = d.staged[:d.persisted] // re-sent after the next connection
		return fmt.Errorf("stage region off=%d len=%d: %w", off, len(data), err)
	}
	return nil
}

// ZeroRegion stages zeroes over [off, off+length) (a hole in the staging
// file).
func (d *Disk) ZeroRegion(ctx context.Context, off, length int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.stage("stage zeroes", off, length); err != nil {
		return err
	}
	if err := d.staging.Zero(off, length, true); err != nil {
		d.staged = d.staged[:d.persisted]
		return fmt.Errorf("stage zeroes off=%d len=%d: %w", off, length, err)
	}
	return nil
}

// SyncProgress fdatasyncs the staging file, persists the regions staged
// since the last call and records through as CopiedThrough. A failure
// part way (a full file system) breaks the Disk: the regions staged in
// memory may then run past the durable CopiedThrough, from which the
// primary resumes, and reopening (or Recover) clips them there.
func (d *Disk) SyncProgress(ctx context.Context, through int64) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	s := d.st.Sync
	if s == nil || s.Ended || d.staging == nil {
		return fmt.Errorf("sync progress through %d: %w", through, ErrNoSync)
	}
	if through < s.CopiedThrough || through > d.size {
		return fmt.Errorf("sync progress through %d: copied through %d of %d bytes", through, s.CopiedThrough, d.size)
	}
	if n := len(d.staged); n > 0 && d.staged[n-1].End() > through {
		return fmt.Errorf("sync progress through %d: regions staged up to %d", through, d.staged[n-1].End())
	}
	defer func() {
		if err != nil {
			d.broken = err
		}
	}()
	if err := d.staging.Flush(ctx); err != nil {
		return fmt.Errorf("sync progress through %d: %w", through, err)
	}
	if err := d.persistStaged(ctx); err != nil {
		return fmt.Errorf("sync progress through %d: %w", through, err)
	}
	st := d.st
	c := *s
	c.CopiedThrough = through
	st.Sync = &c
	if err := d.persist(ctx, st); err != nil {
		return fmt.Errorf("sync progress through %d: %w", through, err)
	}
	return nil
}

// EndCopy records, durably, that the copy is complete: the sync commits
// once records through end are durable.
func (d *Disk) EndCopy(ctx context.Context, end replication.Position) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	s := d.st.Sync
	if s == nil || s.Ended {
		return fmt.Errorf("end sync copy at seq=%d: %w", end.Seq, ErrNoSync)
	}
	if end.Seq < s.Base.Seq {
		return fmt.Errorf("end sync copy at seq=%d: before the sync's base seq=%d", end.Seq, s.Base.Seq)
	}
	st := d.st
	c := *s
	c.Ended, c.End = true, end
	st.Sync = &c
	if err := d.persist(ctx, st); err != nil {
		return fmt.Errorf("end sync copy at seq=%d: %w", end.Seq, err)
	}
	return nil
}

// CommitSync makes the sync the replica's consistent state, atomically
// for readers and durably: it persists a commit intent, then (holding the
// store's write lock) puts the staged regions into the store (a full
// sync's staging file replaces the store; a resync's regions are copied
// over it), applies the sync's records, fdatasyncs the store, and clears
// the intent. After a failure past the intent the Disk is broken; Open
// completes the commit.
func (d *Disk) CommitSync(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitIdle() // a full sync replaces the store
	if err := d.usable(); err != nil {
		return err
	}
	s := d.st.Sync
	if s == nil || !s.Ended || d.head.Seq < s.End.Seq || d.staging == nil {
		return fmt.Errorf("commit sync: %w (or not ready: head seq=%d)", ErrNoSync, d.head.Seq)
	}
	if err := d.staging.Flush(ctx); err != nil {
		return fmt.Errorf("commit sync %s: %w", syncName(s.ID), err)
	}
	if err := d.persistStaged(ctx); err != nil {
		return fmt.Errorf("commit sync %s: %w", syncName(s.ID), err)
	}
	st := d.st
	st.Committing = true
	if err := d.persist(ctx, st); err != nil {
		return fmt.Errorf("commit sync %s: %w", syncName(s.ID), err)
	}
	if err := d.finishCommit(ctx); err != nil {
		d.broken = err
		return fmt.Errorf("commit sync %s: %w", syncName(s.ID), err)
	}
	return nil
}

// finishCommit carries out a persisted commit intent. Every step can run
// again after a crash. d.mu held.
func (d *Disk) finishCommit(ctx context.Context) error {
	s := d.st.Sync
	if err := d.hook(faultIntent); err != nil {
		return err
	}
	d.rw.Lock()
	err := d.install(ctx, s)
	d.rw.Unlock()
	if err != nil {
		return err
	}
	if err := d.hook(faultApplied); err != nil {
		return err
	}
	if err := d.persist(ctx, diskState{Initialized: true, Applied: d.head.Seq}); err != nil {
		return err
	}
	d.applied = d.head.Seq
	d.logger.Info("replica: sync committed", logKeySync, syncName(s.ID), "full", s.Full, logKeySeq, d.head.Seq)
	if err := d.dropStaging(); err != nil {
		d.logger.Warn("replica: remove staging after commit", logKeyErr, err)
	}
	return nil
}

// install puts the staged regions and the sync's records into the store
// and fdatasyncs it. d.rw held exclusively.
func (d *Disk) install(ctx context.Context, s *replication.SyncInfo) error {
	storePath := filepath.Join(d.dir, storeFile)
	stagingPath := filepath.Join(d.dir, stagingFile)
	if s.Full {
		if err := d.replaceStore(storePath, stagingPath); err != nil {
			return err
		}
	} else if err := d.copyStaged(stagingPath); err != nil {
		return err
	}
	if err := d.hook(faultCopied); err != nil {
		return err
	}
	n := 0
	err := d.log.ReadFrom(ctx, s.Base.Seq+1, func(r journal.Record) error {
		if r.Seq > d.head.Seq {
			return errStop
		}
		n++
		return d.apply(r)
	})
	if err != nil && !errors.Is(err, errStop) {
		return fmt.Errorf("apply sync records after seq=%d: %w", s.Base.Seq, err)
	}
	if want := d.head.Seq - s.Base.Seq; uint64(n) != want {
		return fmt.Errorf("apply sync records after seq=%d: %d of %d found", s.Base.Seq, n, want)
	}
	if err := d.store.Flush(ctx); err != nil {
		return fmt.Errorf("commit sync: %w", err)
	}
	return nil
}

// replaceStore renames the staging file over the store, unless that was
// done before a crash (no staging file left), and reopens the store.
func (d *Disk) replaceStore(storePath, stagingPath string) error {
	if _, err := os.Stat(stagingPath); errors.Is(err, os.ErrNotExist) {
		return nil // renamed before a crash; the store is the staged one
	}
	if d.staging != nil {
		if err := d.staging.Flush(context.Background()); err != nil {
			return fmt.Errorf("commit full sync: %w", err)
		}
		if err := d.staging.Close(); err != nil {
			return fmt.Errorf("commit full sync: %w", err)
		}
		d.staging = nil
	}
	if err := os.Rename(stagingPath, storePath); err != nil {
		return fmt.Errorf("commit full sync: %w", err)
	}
	if err := syncDir(d.dir); err != nil {
		return fmt.Errorf("commit full sync: %w", err)
	}
	store, err := openStore(storePath, d.size)
	if err != nil {
		return fmt.Errorf("commit full sync: reopen store: %w", err)
	}
	old := d.store
	d.store = store
	if err := old.Close(); err != nil {
		d.logger.Warn("replica: close replaced store", logKeyErr, err)
	}
	return nil
}

// copyStaged copies the staged regions from the staging file into the
// store, as holes where they are zero.
func (d *Disk) copyStaged(stagingPath string) error {
	if d.staging == nil {
		f, err := disk.OpenFile(stagingPath, disk.FileOptions{Size: d.size})
		if err != nil {
			return fmt.Errorf("commit resync: %w", err)
		}
		d.staging = f
	}
	buf := make([]byte, copyChunk)
	for _, r := range d.staged {
		for off := r.Off; off < r.End(); {
			n := min(int64(copyChunk), r.End()-off)
			b := buf[:n]
			if _, err := d.staging.ReadAt(b, off); err != nil {
				return fmt.Errorf("commit resync: read staged off=%d: %w", off, err)
			}
			var err error
			if isZero(b) {
				err = d.store.Zero(off, n, true)
			} else {
				_, err = d.store.WriteAt(b, off)
			}
			if err != nil {
				return fmt.Errorf("commit resync: %w", err)
			}
			off += n
		}
	}
	return nil
}

// hook calls the fault hook at point.
func (d *Disk) hook(point string) error {
	if d.fault == nil {
		return nil
	}
	if err := d.fault(point); err != nil {
		return fmt.Errorf("%s: %w", point, err)
	}
	return nil
}

var zeroes = make([]byte, copyChunk)

func isZero(b []byte) bool { return bytes.Equal(b, zeroes[:len(b)]) }

// syncDir fsyncs a directory, making renames in it durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
