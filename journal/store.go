package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Log attribute keys.
const (
	logKeyLog   = "log"
	logKeySeq   = "seq"
	logKeyErr   = "err"
	logKeyCount = "records"
	logKeyDir   = "dir"
)

var (
	// ErrClosed is returned by calls on a closed Store or a dropped Log.
	ErrClosed = errors.New("journal: closed")
	// ErrFull is returned by Append when the record would take the log
	// past Options.MaxBytes. Nothing was appended.
	ErrFull = errors.New("journal: log full")
	// ErrNotFound is returned for a meta key or hold that was never set.
	ErrNotFound = errors.New("journal: not found")
	// ErrReleased is returned by ReadFrom for a seq that was released.
	ErrReleased = errors.New("journal: records released")
	// ErrAborted is returned by Pending.Wait for a record that was never
	// committed because an earlier record of its log failed to commit.
	ErrAborted = errors.New("journal: append aborted")
	// ErrLocked is returned by Open when another process has the journal
	// directory open.
	ErrLocked = errors.New("journal: directory in use by another process")
)

// Store is one badger database holding the logs of every disk of a site.
// It owns the group committer, the syncer and the value-log GC loop. It is
// safe for concurrent use.
type Store struct {
	db   *badger.DB
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	logs   map[string]*Log
	closed bool

	// The commit queue. Lock order: Log.mu before qmu.
	qmu       sync.Mutex
	qcond     *sync.Cond // broadcast when committed advances or on close
	queue     []*entry
	enqueued  uint64 // entries ever queued
	committed uint64 // entries ever processed (committed or failed)
	syncReqs  []*syncReq
	qclosed   bool
	qsig      chan struct{}
	ssig      chan struct{}

	space     *spaceGuard
	released  atomic.Int64 // record bytes released since the last reclaim
	memFill   atomic.Int64 // estimated memtable bytes written since the last padding
	reclaimCh chan struct{}
	padSeq    uint64 // owned by the GC loop

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// entry is one record waiting for the committer.
type entry struct {
	l     *Log
	epoch uint64
	seq   uint64
	sum   uint64
	key   []byte
	val   []byte
	p     *Pending
}

type syncReq struct {
	target uint64
	done   chan struct{}
	err    error
}

// Open opens (creating when needed) the journal in dir and starts its
// committer, syncer and value-log GC loop. A second process opening the
// same dir gets an error wrapping ErrLocked.
func Open(ctx context.Context, dir string, opts Options, logger *slog.Logger) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	o := opts.withDefaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	bo := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{logger}).
		WithSyncWrites(false).
		WithDetectConflicts(false).
		WithMemTableSize(o.MemTableSize).
		WithNumMemtables(o.NumMemtables).
		WithValueThreshold(o.ValueThreshold).
		WithBlockCacheSize(o.BlockCacheSize).
		WithIndexCacheSize(o.IndexCacheSize).
		WithValueLogFileSize(o.ValueLogFileSize).
		WithNumCompactors(o.NumCompactors).
		WithNumLevelZeroTables(o.NumLevelZeroTables).
		WithNumLevelZeroTablesStall(o.NumLevelZeroTables * 3).
		WithBaseTableSize(o.MemTableSize / 2).
		WithCompactL0OnClose(false).
		WithMetricsEnabled(false)
	db, err := badger.Open(bo)
	if err != nil {
		if errors.Is(err, os.ErrExist) || isLockErr(err) {
			return nil, fmt.Errorf("open journal %s: %w (%v)", dir, ErrLocked, err)
		}
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	s := &Store{
		db:        db,
		opts:      o,
		log:       logger,
		logs:      make(map[string]*Log),
		qsig:      make(chan struct{}, 1),
		ssig:      make(chan struct{}, 1),
		reclaimCh: make(chan struct{}, 1),
		space:     &spaceGuard{dir: dir, min: o.MinFreeBytes, stat: o.FreeSpace},
	}
	s.qcond = sync.NewCond(&s.qmu)
	wctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go s.committer()
	go s.syncer()
	if o.GCInterval > 0 {
		s.wg.Add(1)
		go s.gcLoop(wctx)
	}
	logger.Debug("journal open", logKeyDir, dir)
	return s, nil
}

func isLockErr(err error) bool {
	// badger: "Cannot acquire directory lock on ...  Another process is
	// using this Badger database." wrapping EWOULDBLOCK from flock.
	return errors.Is(err, syscall.EWOULDBLOCK) ||
		strings.Contains(strings.ToLower(err.Error()), "another process is using")
}

// Close drains the commit queue, syncs and closes the database. Logs and
// Pending values of a closed store report ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, l := range s.logs {
		l.markClosed()
	}
	s.mu.Unlock()

	s.qmu.Lock()
	s.qclosed = true
	s.qcond.Broadcast()
	s.qmu.Unlock()
	s.signal(s.qsig)
	s.signal(s.ssig)
	s.cancel()
	s.wg.Wait()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close journal: %w", err)
	}
	return nil
}

func (s *Store) signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Log opens the log called name, creating it when it does not exist. On
// first open in this process it verifies the whole unreleased chain; a
// torn or corrupt tail is cut (and logged at Error), never served. The
// same *Log is returned to every caller.
func (s *Store) Log(name string) (*Log, error) {
	if name == "" {
		return nil, fmt.Errorf("open log: empty name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("open log %s: %w", name, ErrClosed)
	}
	if l, ok := s.logs[name]; ok {
		return l, nil
	}
	id, err := s.logID(name)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", name, err)
	}
	l := newLog(s, name, id)
	if err := l.load(); err != nil {
		return nil, fmt.Errorf("open log %s: %w", name, err)
	}
	s.logs[name] = l
	return l, nil
}

// logID returns the id of name, allocating one when needed. s.mu is held.
func (s *Store) logID(name string) (uint32, error) {
	var id uint32
	err := s.db.Update(func(txn *badger.Txn) error {
		it, err := txn.Get(nameKey(name))
		if err == nil {
			return it.Value(func(v []byte) error {
				if len(v) != 4 {
					return fmt.Errorf("%w: log id of %d bytes", ErrCorrupt, len(v))
				}
				id = binary.BigEndian.Uint32(v)
				return nil
			})
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		id = 1
		if it, err := txn.Get(nextIDKey()); err == nil {
			if err := it.Value(func(v []byte) error {
				if len(v) != 4 {
					return fmt.Errorf("%w: next log id of %d bytes", ErrCorrupt, len(v))
				}
				id = binary.BigEndian.Uint32(v)
				return nil
			}); err != nil {
				return err
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		b := make([]byte, 4)
		binary.BigEndian.PutUint32(b, id+1)
		if err := txn.Set(nextIDKey(), b); err != nil {
			return err
		}
		v := make([]byte, 4)
		binary.BigEndian.PutUint32(v, id)
		return txn.Set(nameKey(name), v)
	})
	return id, err
}

// Logs returns the names of every log in the store, open or not.
func (s *Store) Logs() ([]string, error) {
	var names []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{tagName}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			names = append(names, string(it.Item().Key()[1:]))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list logs: %w", err)
	}
	return names, nil
}

// DropLog deletes the log called name and everything in it: records,
// holds and metadata. An open *Log for it reports ErrClosed afterwards.
// Dropping a log that does not exist is not an error.
func (s *Store) DropLog(ctx context.Context, name string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("drop log %s: %w", name, ErrClosed)
	}
	if l, ok := s.logs[name]; ok {
		l.markClosed()
		delete(s.logs, name)
	}
	var id uint32
	found := false
	err := s.db.Update(func(txn *badger.Txn) error {
		it, err := txn.Get(nameKey(name))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := it.Value(func(v []byte) error {
			if len(v) == 4 {
				id, found = binary.BigEndian.Uint32(v), true
			}
			return nil
		}); err != nil {
			return err
		}
		return txn.Delete(nameKey(name))
	})
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("drop log %s: %w", name, err)
	}
	if !found {
		return nil
	}
	if err := s.deletePrefix(ctx, logPrefix(id)); err != nil {
		return fmt.Errorf("drop log %s: %w", name, err)
	}
	return nil
}

// deletePrefix deletes every key under prefix in batches.
func (s *Store) deletePrefix(ctx context.Context, prefix []byte) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var keys [][]byte
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			for it.Rewind(); it.Valid() && len(keys) < 10000; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		if err := s.deleteKeys(keys); err != nil {
			return err
		}
	}
}

// deleteKeys deletes keys in as few transactions as badger allows.
func (s *Store) deleteKeys(keys [][]byte) error {
	for len(keys) > 0 {
		txn := s.db.NewTransaction(true)
		n := 0
		for _, k := range keys {
			if err := txn.Delete(k); err != nil {
				if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
					break
				}
				txn.Discard()
				return err
			}
			n++
		}
		if err := txn.Commit(); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// enqueue hands e to the committer. The caller holds e.l.mu, so the queue
// order of one log is its seq order.
func (s *Store) enqueue(e *entry) error {
	s.qmu.Lock()
	if s.qclosed {
		s.qmu.Unlock()
		return ErrClosed
	}
	s.queue = append(s.queue, e)
	s.enqueued++
	s.qmu.Unlock()
	s.signal(s.qsig)
	return nil
}

// committer writes queued records in batches: one badger transaction for
// everything that queued up while the previous batch was being written.
func (s *Store) committer() {
	defer s.wg.Done()
	var spare []*entry
	for {
		s.qmu.Lock()
		for len(s.queue) == 0 && !s.qclosed {
			s.qmu.Unlock()
			<-s.qsig
			s.qmu.Lock()
		}
		if len(s.queue) == 0 && s.qclosed {
			s.qmu.Unlock()
			return
		}
		batch := s.queue
		s.queue = spare[:0]
		s.qmu.Unlock()

		s.commitBatch(batch)

		s.qmu.Lock()
		s.committed += uint64(len(batch))
		s.qcond.Broadcast()
		s.qmu.Unlock()
		s.signal(s.ssig)
		for i := range batch {
			batch[i] = nil
		}
		spare = batch
	}
}

// commitBatch commits batch in order, in as few transactions as badger's
// batch limits and MaxBatchBytes allow. After a failed transaction every
// later entry of the batch fails too, and each affected log rolls back to
// its last committed record.
func (s *Store) commitBatch(batch []*entry) {
	var failed error
	for len(batch) > 0 {
		if failed != nil {
			for _, e := range batch {
				e.l.fail(e, failed)
			}
			return
		}
		txn := s.db.NewTransaction(true)
		var n int
		var bytes int64
		for _, e := range batch {
			if !e.l.current(e) {
				if n == 0 {
					e.l.fail(e, nil)
					batch = batch[1:]
					continue
				}
				break
			}
			if n > 0 && bytes+int64(len(e.val)) > s.opts.MaxBatchBytes {
				break
			}
			if err := txn.SetEntry(badger.NewEntry(e.key, e.val)); err != nil {
				if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
					break
				}
				failed = fmt.Errorf("append journal seq=%d: %w", e.seq, err)
				break
			}
			n++
			bytes += int64(len(e.val))
		}
		if n == 0 && failed == nil {
			txn.Discard()
			continue
		}
		chunk := batch[:n]
		batch = batch[n:]
		if failed != nil {
			txn.Discard()
			for _, e := range chunk {
				e.l.fail(e, failed)
			}
			continue
		}
		if err := txn.Commit(); err != nil {
			failed = fmt.Errorf("commit journal batch of %d records: %w", len(chunk), err)
			for _, e := range chunk {
				e.l.fail(e, failed)
			}
			s.log.Error("journal commit failed", logKeyErr, err, logKeyCount, len(chunk))
			continue
		}
		var fill int64
		for _, e := range chunk {
			fill += s.memtableCost(len(e.key), len(e.val))
			e.l.committed(e)
		}
		s.memFill.Add(fill)
	}
}

// syncBarrier returns once every entry queued before the call has been
// processed by the committer and the database has been synced since.
func (s *Store) syncBarrier(ctx context.Context) error {
	s.qmu.Lock()
	if s.qclosed {
		s.qmu.Unlock()
		return ErrClosed
	}
	r := &syncReq{target: s.enqueued, done: make(chan struct{})}
	s.syncReqs = append(s.syncReqs, r)
	s.qmu.Unlock()
	s.signal(s.ssig)
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// syncer serves sync requests in groups: one badger Sync for every
// request that arrived while the previous one ran.
func (s *Store) syncer() {
	defer s.wg.Done()
	for {
		s.qmu.Lock()
		for len(s.syncReqs) == 0 && !s.qclosed {
			s.qmu.Unlock()
			<-s.ssig
			s.qmu.Lock()
		}
		reqs := s.syncReqs
		s.syncReqs = nil
		var target uint64
		for _, r := range reqs {
			target = max(target, r.target)
		}
		if len(reqs) == 0 {
			s.qmu.Unlock()
			return
		}
		for s.committed < target {
			s.qcond.Wait()
		}
		s.qmu.Unlock()
		err := s.db.Sync()
		if err != nil {
			err = fmt.Errorf("sync journal: %w", err)
			s.log.Error("journal sync failed", logKeyErr, err)
		}
		for _, r := range reqs {
			r.err = err
			close(r.done)
		}
	}
}

// gcLoop reclaims value-log space: released records leave garbage in the
// value log, and RunValueLogGC rewrites (or, for a file holding only
// garbage, just deletes) files that are mostly garbage. It runs every
// GCInterval and whenever ReclaimBytes of records were released.
func (s *Store) gcLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.reclaimCh:
		}
		if s.released.Load() >= s.opts.ReclaimBytes {
			s.released.Store(0)
			if err := s.flushMemtable(); err != nil {
				s.log.Warn("journal memtable flush for reclaim", logKeyErr, err)
			}
		}
		s.RunGC(ctx)
	}
}

// noteReleased counts released record bytes and wakes the GC loop once
// there are ReclaimBytes of them.
func (s *Store) noteReleased(n int64) {
	if s.released.Add(n) >= s.opts.ReclaimBytes {
		s.signal(s.reclaimCh)
	}
}

// flushMemtable makes badger flush its memtable by filling it with small
// padding entries, which it then deletes. Badger learns which value-log
// bytes are garbage only when compactions drop the deleted keys, and
// compactions follow memtable flushes; a journal's memtable holds only
// keys and value pointers and would otherwise take hundreds of gigabytes
// of records to fill, leaving released records' value-log files on disk.
// Costs about MemTableSize of LSM writes per ReclaimBytes released.
func (s *Store) flushMemtable() error {
	if err := s.space.admit(s.opts.MemTableSize, true); err != nil {
		return err
	}
	// Records written since the last padding filled part of the memtable
	// (all of it, when it flushed by itself): pad only the rest.
	filled := s.memFill.Swap(0)
	if filled >= s.opts.MemTableSize {
		return nil
	}
	pad := min(s.opts.ValueThreshold-1, 1000)
	val := make([]byte, pad)
	n := int((s.opts.MemTableSize-filled)/s.memtableCost(9, int(pad))) + 64
	keys := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		s.padSeq++
		keys = append(keys, append([]byte{tagPad}, u64(s.padSeq)...))
	}
	for rest := keys; len(rest) > 0; {
		txn := s.db.NewTransaction(true)
		k := 0
		for _, key := range rest {
			if err := txn.Set(key, val); err != nil {
				if errors.Is(err, badger.ErrTxnTooBig) && k > 0 {
					break
				}
				txn.Discard()
				return err
			}
			k++
		}
		if err := txn.Commit(); err != nil {
			return err
		}
		rest = rest[k:]
	}
	return s.deleteKeys(keys)
}

// memtableCost estimates the memtable bytes an entry takes: its key with
// badger's timestamp, the value (or a value pointer when it goes to the
// value log) and a skiplist node.
func (s *Store) memtableCost(key, val int) int64 {
	const node, vptr, ts = 100, 12, 8
	if int64(val) >= s.opts.ValueThreshold {
		val = vptr
	}
	return int64(key + ts + val + node)
}

// RunGC runs value-log GC until no file is worth rewriting. The GC loop
// calls it; tests and tools may call it directly.
func (s *Store) RunGC(ctx context.Context) {
	for i := 0; i < 64 && ctx.Err() == nil; i++ {
		err := s.db.RunValueLogGC(s.opts.GCDiscardRatio)
		if err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				s.log.Warn("journal value-log GC", logKeyErr, err)
			}
			return
		}
	}
}

// Size returns the bytes the store's files take on disk: the LSM tree and
// the value log.
func (s *Store) Size() (lsm, vlog int64) {
	dir := s.db.Opts().Dir
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		switch {
		case len(e.Name()) > 5 && e.Name()[len(e.Name())-5:] == ".vlog":
			vlog += info.Size()
		default:
			lsm += info.Size()
		}
	}
	return lsm, vlog
}

// badgerLogger routes badger's logging into slog; badger's chatty Info
// goes to Debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error("badger: " + fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn("badger: " + fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug("badger: " + fmt.Sprintf(f, a...)) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Debug("badger: " + fmt.Sprintf(f, a...)) }
