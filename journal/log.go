package journal

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Pending is an appended record on its way into its segment.
type Pending struct {
	seq  uint64
	done chan struct{}
	err  error
}

// Seq is the sequence number Append assigned.
func (p *Pending) Seq() uint64 { return p.seq }

// Done is closed once the record is committed or has failed.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait returns once the record and every record before it are written to
// their segment files, which means it survives kill -9 of the process
// (not a power cut: see Log.Sync), or with the reason it never will be.
// A ctx error means only that the caller stopped waiting: the record may
// still commit.
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Recovery describes what Store.Log found when it opened a log.
type Recovery struct {
	// First and Head bound the unreleased records after recovery
	// (First > Head when there are none).
	First, Head uint64
	// Cut is how many records were dropped as damaged or missing, from
	// seq CutAt onwards; Err says why. Zero when the chain was intact.
	// Only records at or below the last synced point count here: they
	// had been written whole, so a failure there is damage.
	Cut   int
	CutAt uint64
	Err   error
	// Torn is how many records past the last synced point were dropped
	// because a record before them was not (or not wholly) written: the
	// tail of writes in flight when the process died or the power went,
	// which were never acknowledged as surviving that.
	Torn int
}

// recInfo is what a log remembers of each unreleased record: where it
// lives, its chained sum and its time.
type recInfo struct {
	seq  uint64
	sum  uint64
	size int64
	off  int64
	at   int64 // Record.Time in Unix nanoseconds
	seg  *segment
}

// wentry is an appended record from its reservation until it joins the
// contiguous written prefix of the log. Its owner (the appending
// goroutine) waits on sig: false once the record is written (or failed),
// true when it is made the writer of the queue (see writeQueued).
type wentry struct {
	seq   uint64
	sum   uint64
	epoch uint64
	done  bool // written
	p     *Pending

	seg  *segment
	off  int64
	hdr  [HeaderSize]byte
	data []byte // the caller's, valid until sig says written
	sig  chan bool
}

// Log is one disk's change log: a dense, hash-chained sequence of
// records. It is safe for concurrent use; appends from all goroutines are
// ordered by the call that assigned their Seq.
type Log struct {
	s    *Store
	name string
	id   uint32

	relMu   sync.Mutex     // serialises releases
	writers sync.WaitGroup // appends between reservation and completion

	mu        sync.Mutex
	closed    bool
	epoch     uint64 // bumped when a failed write rolls the log back
	head      uint64 // last appended seq
	headSum   uint64
	commitSeq uint64 // last seq of the contiguous written prefix
	commitSum uint64
	durable   uint64 // last seq known synced (persisted as the sync mark)
	base      uint64 // last released seq
	baseSum   uint64
	recs      []recInfo // unreleased appended records, in seq order
	recs0     int       // index of the first live element of recs
	bytes     int64
	segs      []*segment // the log's segments, by first seq; the last is written
	inflight  []*wentry  // appended records after commitSeq, in seq order
	wq        []*wentry  // reserved records not yet handed to a writer, in seq order
	writing   bool       // a goroutine writes the queue (see writeQueued)
	direct    bool       // segments are written with direct I/O (see direct.go)
	holds     map[string]uint64
	notify    chan struct{} // closed and replaced when commitSeq advances or the log rolls back
	recovery  Recovery
}

func newLog(s *Store, name string, id uint32) *Log {
	return &Log{s: s, name: name, id: id, holds: make(map[string]uint64), notify: make(chan struct{})}
}

// Name is the log's name.
func (l *Log) Name() string { return l.name }

// Recovery reports what opening the log found.
func (l *Log) Recovery() Recovery {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recovery
}

// Head is the seq of the last appended record (committed or not), 0 for
// a log that never had one.
func (l *Log) Head() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head
}

// Committed is the seq of the last committed record: every record up to
// it is written, readable with ReadFrom and survives kill -9.
func (l *Log) Committed() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.commitSeq
}

// Base returns the last released seq and its sum: the records after it
// are the log's unreleased records, chained from sum.
func (l *Log) Base() (seq, sum uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.base, l.baseSum
}

// Before returns the seq of the newest committed record whose Time is
// before t, or the base when there is none: a retention window that
// starts at t may release the log up to it. Record times come from the
// writer's clock and are searched as if they never went back; a clock
// stepped back shifts the answer by that step, not further.
func (l *Log) Before(t time.Time) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	recs := l.recs[l.recs0:]
	recs = recs[:min(len(recs), int(l.commitSeq-l.base))]
	at := t.UnixNano()
	i, _ := slices.BinarySearchFunc(recs, at, func(r recInfo, at int64) int {
		if r.at < at {
			return -1
		}
		return 1
	})
	if i == 0 {
		return l.base
	}
	return recs[i-1].seq
}

// Bytes is the encoded size of the unreleased records, the figure that
// Options.MaxBytes limits.
func (l *Log) Bytes() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bytes
}

// MaxBytes is the limit on Bytes (Options.MaxBytes): past it Append fails
// with ErrFull.
func (l *Log) MaxBytes() int64 { return l.s.opts.MaxBytes }

// markClosed refuses further appends and wakes waiters.
func (l *Log) markClosed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.notify)
	}
}

// wakeLocked wakes WaitAfter and Sync waiters. l.mu held.
func (l *Log) wakeLocked() {
	if !l.closed {
		close(l.notify)
		l.notify = make(chan struct{})
	}
}

// closeFiles waits for the appends in flight, then syncs and closes the
// log's segments and returns the last committed seq, now durable.
func (l *Log) closeFiles() (uint64, error) {
	l.writers.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	var first error
	for _, g := range l.segs {
		if err := fdatasync(g.f); err != nil && first == nil {
			first = err
		}
		g.closeDirect()
		_ = g.f.Close()
	}
	l.segs = nil
	return l.commitSeq, first
}

// pinLocked pins the segments from g onwards against retirement. l.mu held.
func (l *Log) pinLocked(g *segment) []*segment {
	i := 0
	for i < len(l.segs) && l.segs[i] != g {
		i++
	}
	pinned := append([]*segment(nil), l.segs[i:]...)
	for _, p := range pinned {
		p.refs++
	}
	return pinned
}

// unpin undoes pinLocked, retiring segments released meanwhile.
func (l *Log) unpin(pinned []*segment) {
	l.mu.Lock()
	var retire []*segment
	for _, g := range pinned {
		g.refs--
		if g.dead && g.refs == 0 {
			retire = append(retire, g)
		}
	}
	l.mu.Unlock()
	for _, g := range retire {
		l.s.retire(g)
	}
}

// dropSegmentsLocked removes segs from the log, returning those nobody
// reads any more, to retire once l.mu is released.
func dropSegmentsLocked(segs []*segment) []*segment {
	var retire []*segment
	for _, g := range segs {
		g.dead = true
		if g.refs == 0 {
			retire = append(retire, g)
		}
	}
	return retire
}
