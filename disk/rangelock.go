package disk

import "sync"

// rangeLock serialises writes to overlapping byte ranges.
type rangeLock struct {
	mu   sync.Mutex
	held []*span
}

type span struct {
	off, end int64
	done     chan struct{}
}

// lock blocks until [off, end) overlaps no held range, holds it and
// returns its unlock.
func (r *rangeLock) lock(off, end int64) func() {
	for {
		r.mu.Lock()
		var wait chan struct{}
		for _, h := range r.held {
			if h.off < end && off < h.end {
				wait = h.done
				break
			}
		}
		if wait == nil {
			s := &span{off: off, end: end, done: make(chan struct{})}
			r.held = append(r.held, s)
			r.mu.Unlock()
			return func() { r.unlock(s) }
		}
		r.mu.Unlock()
		<-wait
	}
}

func (r *rangeLock) unlock(s *span) {
	r.mu.Lock()
	for i, h := range r.held {
		if h == s {
			last := len(r.held) - 1
			r.held[i] = r.held[last]
			r.held[last] = nil
			r.held = r.held[:last]
			break
		}
	}
	r.mu.Unlock()
	close(s.done)
}
