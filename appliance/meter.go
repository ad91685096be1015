package appliance

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/nbd"
)

// meter counts the bytes a disk reads and writes, for status throughput.
type meter struct {
	read, written atomic.Int64

	mu         sync.Mutex
	lastAt     time.Time
	lastR      int64
	lastW      int64
	rate, wrat float64
}

// rates returns read and write bytes per second since the previous call
// (at least a second apart; sooner calls return the previous figures).
func (m *meter) rates(now time.Time) (readBps, writeBps float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, w := m.read.Load(), m.written.Load()
	if m.lastAt.IsZero() {
		m.lastAt, m.lastR, m.lastW = now, r, w
		return 0, 0
	}
	if dt := now.Sub(m.lastAt).Seconds(); dt >= 1 {
		m.rate = float64(r-m.lastR) / dt
		m.wrat = float64(w-m.lastW) / dt
		m.lastAt, m.lastR, m.lastW = now, r, w
	}
	return m.rate, m.wrat
}

// metered is a disk's tap seen through its meter: the same method set as
// the tap, so the NBD server and FUSE advertise the same capabilities.
type metered struct {
	tap *disk.Tap
	m   *meter
}

var (
	_ nbd.Backend     = metered{}
	_ nbd.Flusher     = metered{}
	_ nbd.FUAWriter   = metered{}
	_ nbd.Trimmer     = metered{}
	_ nbd.Zeroer      = metered{}
	_ nbd.Extenter    = metered{}
	_ nbd.MultiConner = metered{}
)

func (b metered) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.tap.ReadAt(p, off)
	b.m.read.Add(int64(n))
	return n, err
}

// WriteAt has the tap's acknowledgement contract: see disk.Tap.WriteAt.
func (b metered) WriteAt(p []byte, off int64) (int, error) {
	n, err := b.tap.WriteAt(p, off)
	b.m.written.Add(int64(n))
	return n, err
}

// WriteAtFUA has the tap's acknowledgement contract: see disk.Tap.WriteAtFUA.
func (b metered) WriteAtFUA(p []byte, off int64) (int, error) {
	n, err := b.tap.WriteAtFUA(p, off)
	b.m.written.Add(int64(n))
	return n, err
}

func (b metered) Size() int64                           { return b.tap.Size() }
func (b metered) Flush(ctx context.Context) error       { return b.tap.Flush(ctx) }
func (b metered) Trim(off, length int64) error          { return b.tap.Trim(off, length) }
func (b metered) Zero(off, n int64, mayTrim bool) error { return b.tap.Zero(off, n, mayTrim) }
func (b metered) Extents(off, length int64) ([]nbd.Extent, error) {
	return b.tap.Extents(off, length)
}
func (b metered) CanMultiConn() bool { return b.tap.CanMultiConn() }
