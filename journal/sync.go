package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"
)

// noteDirty adds g to the segments the next sync round flushes.
func (s *Store) noteDirty(g *segment) {
	s.dmu.Lock()
	s.dirty[g] = struct{}{}
	s.dmu.Unlock()
}

// noteDirtyDir adds a directory that gained an entry to the next round.
func (s *Store) noteDirtyDir(dir string) {
	s.dmu.Lock()
	s.dirtyDirs[dir] = struct{}{}
	s.dmu.Unlock()
}

// syncBarrier returns once every segment written and every badger write
// made before the call has been synced.
func (s *Store) syncBarrier(ctx context.Context) error {
	s.dmu.Lock()
	if s.sclosed {
		s.dmu.Unlock()
		return ErrClosed
	}
	r := &syncReq{done: make(chan struct{})}
	s.syncReqs = append(s.syncReqs, r)
	s.dmu.Unlock()
	s.signal(s.ssig)
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// syncer serves sync requests in rounds: every request that arrived while
// the previous round ran shares one fdatasync per written segment (and
// one badger Sync when metadata changed). After a round it records (at
// most every markEvery, in badger, without syncing it) how far each log
// is synced: Store.Log
// treats damage at or below that mark as corruption and past it as a
// torn tail.
func (s *Store) syncer() {
	defer s.wg.Done()
	var marked time.Time
	for {
		s.dmu.Lock()
		for len(s.syncReqs) == 0 && !s.sclosed {
			s.dmu.Unlock()
			<-s.ssig
			s.dmu.Lock()
		}
		if len(s.syncReqs) == 0 {
			s.dmu.Unlock()
			return
		}
		reqs := s.syncReqs
		s.syncReqs = nil
		s.dmu.Unlock()

		// What is committed now was written, and its segment marked
		// dirty, before the dirty set is taken below. Marks are saved at
		// most every markEvery: a badger write after every round would
		// delay the next round, and a mark behind is safe.
		var marks map[*Log]uint64
		if time.Since(marked) >= markEvery {
			marks = s.commitMarks()
		}
		s.dmu.Lock()
		dirty, dirs := s.dirty, s.dirtyDirs
		s.dirty, s.dirtyDirs = make(map[*segment]struct{}), make(map[string]struct{})
		s.dmu.Unlock()
		err := s.syncFiles(dirty, dirs)
		if err == nil && s.metaDirty.Swap(false) {
			if e := s.db.Sync(); e != nil {
				s.metaDirty.Store(true)
				err = fmt.Errorf("sync journal index: %w", e)
			}
		}
		if err != nil {
			s.log.Error("journal sync failed", logKeyErr, err)
		}
		for _, r := range reqs {
			r.err = err
			close(r.done)
		}
		if err == nil && marks != nil {
			s.saveMarks(marks)
			marked = time.Now()
		}
	}
}

// markEvery is how often the syncer records the logs' sync marks.
const markEvery = time.Second

// commitMarks returns every open log's commit point.
func (s *Store) commitMarks() map[*Log]uint64 {
	s.mu.Lock()
	logs := make([]*Log, 0, len(s.logs))
	for _, l := range s.logs {
		logs = append(logs, l)
	}
	s.mu.Unlock()
	m := make(map[*Log]uint64, len(logs))
	for _, l := range logs {
		l.mu.Lock()
		if l.commitSeq > l.durable {
			m[l] = l.commitSeq
		}
		l.mu.Unlock()
	}
	return m
}

// syncFiles fdatasyncs the segments and fsyncs the directories. A
// segment closed meanwhile (released or dropped) needs no sync.
func (s *Store) syncFiles(segs map[*segment]struct{}, dirs map[string]struct{}) error {
	for g := range segs {
		if err := fdatasync(g.f); err != nil && !isClosedErr(err) {
			return fmt.Errorf("sync segment %s: %w", g.path, err)
		}
	}
	for d := range dirs {
		f, err := os.Open(d)
		if err != nil {
			continue // dropped meanwhile
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("sync directory %s: %w", d, err)
		}
	}
	return nil
}

// saveMarks records the synced points of logs in badger.
func (s *Store) saveMarks(marks map[*Log]uint64) {
	if len(marks) == 0 {
		return
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		for l, seq := range marks {
			if err := txn.Set(syncedKey(l.id), u64(seq)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("journal save sync marks", logKeyErr, err)
		return
	}
	for l, seq := range marks {
		l.mu.Lock()
		l.durable = max(l.durable, seq)
		l.mu.Unlock()
	}
}

// fdatasync flushes f's data (and the size, when it grew) to the device.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("%w: %w", os.ErrClosed, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		// Control fails only on a closed file, with internal/poll's
		// error, which is not os.ErrClosed.
		return fmt.Errorf("%w: %w", os.ErrClosed, err)
	}
	return serr
}

func isClosedErr(err error) bool { return errors.Is(err, os.ErrClosed) }

// gcLoop runs badger's value-log GC now and then. Records no longer live
// in badger; what it collects is the garbage of holds and metadata.
func (s *Store) gcLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.RunGC(ctx)
	}
}
