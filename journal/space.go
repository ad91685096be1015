package journal

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spaceGuard keeps badger off a full file system. Badger writes its value
// log and memtable logs through mmap into sparse files, and a page that
// cannot be allocated there kills the process with SIGBUS instead of
// returning ENOSPC. So the journal refuses writes, with an error wrapping
// syscall.ENOSPC, while the file system has less than Options.MinFreeBytes
// available (less than half of it for the small writes of holds and
// metadata, so that checkpoints can still release records).
type spaceGuard struct {
	dir  string
	min  int64
	stat func(dir string) (int64, error)

	mu      sync.Mutex
	free    int64 // available bytes at the last statfs
	since   int64 // bytes admitted since the last statfs
	statted time.Time
}

// statEvery and statBytes bound how stale the guard's view may be.
const (
	statEvery = 5 * time.Millisecond
	statBytes = 8 << 20
)

// admit reports whether n more bytes may be written to the journal;
// small writes may use half the reserve.
func (g *spaceGuard) admit(n int64, small bool) error {
	if g.min <= 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.statted) > statEvery || g.since+n > statBytes {
		stat := g.stat
		if stat == nil {
			stat = statfsAvail
		}
		if free, err := stat(g.dir); err == nil {
			g.free = free
			g.since = 0
			g.statted = time.Now()
		}
	}
	reserve := g.min
	if small {
		reserve /= 2
	}
	if left := g.free - g.since - n; left < reserve {
		return fmt.Errorf("journal: %w: %d bytes available on %s, %d kept in reserve", syscall.ENOSPC, max(left+n, 0), g.dir, reserve)
	}
	g.since += n
	return nil
}

// stale makes the next admit stat the file system again.
func (g *spaceGuard) stale() {
	g.mu.Lock()
	g.statted = time.Time{}
	g.mu.Unlock()
}

// admit is the space guard's admit, except that before refusing for
// want of space it gives the free segment pool's space back to the file
// system and asks again: reuse saves time, never space a write needs.
func (s *Store) admit(n int64, small bool) error {
	err := s.space.admit(n, small)
	if err == nil || !errors.Is(err, syscall.ENOSPC) || s.dropPool() == 0 {
		return err
	}
	s.space.stale()
	return s.space.admit(n, small)
}

// statfsAvail is the bytes available to unprivileged users on dir's file
// system (root's reserved blocks are left alone).
func statfsAvail(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
