package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

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

// Store is one journal directory: the segment files of every disk's log
// and one badger database holding names, bases, holds, sync marks and
// metadata. It owns the syncer and badger's value-log GC loop. It is safe
// for concurrent use.
type Store struct {
	db   *badger.DB
	dir  string
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	logs   map[string]*Log
	closed bool

	// Sync requests and what the next sync round must flush. Lock
	// order: Log.mu before dmu.
	dmu       sync.Mutex
	dirty     map[*segment]struct{} // segments written since the last sync round
	dirtyDirs map[string]struct{}   // directories that gained a segment
	syncReqs  []*syncReq
	sclosed   bool
	ssig      chan struct{}
	metaDirty atomic.Bool // badger written since the last sync round

	poolMu  sync.Mutex
	pool    []string // free segment files
	poolSeq uint64

	space *spaceGuard

	// aligned holds *[]byte buffers for direct I/O (see direct.go), shared
	// by the logs that write with it and left to the GC when idle.
	aligned sync.Pool
	// views holds *[]byte read buffers of ReadViews, shared by the logs:
	// a sender reads a batch every few milliseconds, and a fresh buffer
	// each time cost the primary 8% of its CPU zeroing it.
	views sync.Pool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type syncReq struct {
	done chan struct{}
	err  error
}

// Open opens (creating when needed) the journal in dir and starts its
// syncer and badger's value-log GC loop. A second process opening the
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
		dir:       dir,
		opts:      o,
		log:       logger,
		logs:      make(map[string]*Log),
		dirty:     make(map[*segment]struct{}),
		dirtyDirs: make(map[string]struct{}),
		ssig:      make(chan struct{}, 1),
		space:     &spaceGuard{dir: dir, min: o.MinFreeBytes, stat: o.FreeSpace},
	}
	if err := s.openPool(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
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

// Close waits for the appends in flight, syncs every segment, records
// how far each log is synced and closes the database. Logs and Pending
// values of a closed store report ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	logs := make([]*Log, 0, len(s.logs))
	for _, l := range s.logs {
		l.markClosed()
		logs = append(logs, l)
	}
	s.mu.Unlock()

	s.dmu.Lock()
	s.sclosed = true
	s.dmu.Unlock()
	s.signal(s.ssig)
	s.cancel()
	s.wg.Wait()
	var first error
	txn := s.db.NewTransaction(true)
	for _, l := range logs {
		seq, err := l.closeFiles()
		if err != nil {
			first = cmpErr(first, fmt.Errorf("close journal %s: %w", l.name, err))
			continue
		}
		if err := txn.Set(syncedKey(l.id), u64(seq)); err != nil {
			first = cmpErr(first, fmt.Errorf("close journal %s: %w", l.name, err))
		}
	}
	if err := txn.Commit(); err != nil {
		first = cmpErr(first, fmt.Errorf("close journal: %w", err))
	}
	if err := s.db.Close(); err != nil {
		first = cmpErr(first, fmt.Errorf("close journal: %w", err))
	}
	return first
}

// cmpErr returns the first non-nil of a and b.
func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
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
	dropped := s.logs[name]
	if dropped != nil {
		dropped.markClosed()
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
	if dropped != nil {
		_, _ = dropped.closeFiles()
	}
	if !found {
		return nil
	}
	// Its segment files are as good for reuse as released ones.
	dir := s.logSegDir(id)
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if _, ok := parseSegName(e.Name()); ok && e.Type().IsRegular() {
				s.recycle(filepath.Join(dir, e.Name()))
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("drop log %s: %w", name, err)
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

// Size returns the bytes the store's files take on disk: badger's files
// (its LSM tree and value log: names, holds, metadata) and the record
// segments, free ones included.
func (s *Store) Size() (index, records int64) {
	_ = filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if filepath.Ext(p) == segExt {
			records += info.Size()
		} else {
			index += info.Size()
		}
		return nil
	})
	return index, records
}

// badgerLogger routes badger's logging into slog; badger's chatty Info
// goes to Debug. Badger logs at Debug on every write batch, so a message
// is formatted only when its level is enabled.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a) }

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	ctx := context.Background()
	if b.l.Enabled(ctx, level) {
		b.l.Log(ctx, level, "badger: "+fmt.Sprintf(f, a...))
	}
}
