package nbd

import (
	"sync/atomic"
	"time"
)

// Requests whose kind has recently been served by the backend within
// fastThreshold go to the connection's one fast worker, in order: a
// page-cache read or write costs less than a goroutine of its own and the
// wake-ups around it. Slower kinds (flushes, a backend waiting on a disk or
// a remote journal), FUA requests and CACHE (which reads a whole range) are
// served concurrently, up to MaxInFlight. Every probeEvery-th request of a
// slow kind goes to the fast worker again, so the choice follows the
// backend when it speeds up.
//
// A connection starts with every kind presumed slow (unknownLatency): its
// first burst is served concurrently, and a kind that is fast falls below
// fastThreshold within a few dozen requests. Presumed fast, a backend that
// waits (a sync-mode write waits for the secondary's journal) had the
// whole first burst queued to the one fast worker and served one after
// another: fio's first sixteen 1 MiB writes took up to 0.7 s.
const (
	fastThreshold  = 40 * time.Microsecond
	probeEvery     = 64
	unknownLatency = time.Millisecond
)

// newLatencies returns the averages of a new connection: unknownLatency
// for every kind.
func newLatencies() *latencies {
	l := &latencies{}
	for i := range l.avg {
		l.avg[i].Store(int64(unknownLatency))
	}
	return l
}

// latencies keeps a moving average of the backend's service time per
// command type.
type latencies struct {
	avg   [8]atomic.Int64 // nanoseconds, by command type
	count [8]atomic.Uint32
}

func (l *latencies) fast(typ uint16) bool {
	if typ == CmdFlush || typ == CmdCache || int(typ) >= len(l.avg) {
		return false
	}
	if time.Duration(l.avg[typ].Load()) < fastThreshold {
		return true
	}
	return l.count[typ].Add(1)%probeEvery == 0
}

func (l *latencies) observe(typ uint16, d time.Duration) {
	if int(typ) >= len(l.avg) {
		return
	}
	old := l.avg[typ].Load()
	l.avg[typ].Store(old + (int64(d)-old)/8)
}
