package replication

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
)

// Defaults for zero VerifyOptions fields.
const (
	DefaultVerifyRegionSize = 1 << 20
	DefaultVerifyPasses     = 5
	verifyBatch             = 64
	verifyAttempts          = 5
)

var (
	// ErrNotProtected is returned by Verify while the disk is not in the
	// protected state with a live connection (a sync is running, or the
	// link is down).
	ErrNotProtected = errors.New("replication: disk not protected and connected")
	errLinkDown     = errors.New("replication: link dropped during verify")
)

// VerifyOptions tunes Verify. Zero fields take the Default values.
type VerifyOptions struct {
	// RegionSize is the unit compared; a region that differs is reported
	// whole. At most MaxFramePayload.
	RegionSize int64
	// Passes bounds how many times a region written during the pass is
	// checked again before it is reported as unsettled.
	Passes int
}

// VerifyReport is the result of Verify.
type VerifyReport struct {
	// Regions is how many regions were compared.
	Regions int
	// Differ are regions whose digests differ although no write touched
	// them while they were compared: the replica is wrong there.
	Differ []Region
	// Unsettled are regions written during every pass: they could not be
	// compared under the write load.
	Unsettled []Region
	// Seq is the secondary's consistent point at the last comparison.
	Seq uint64
	// ChainChecked is true when the secondary checked its journal's hash
	// chain; ChainThrough is the last record checked and ChainError the
	// failure, if any.
	ChainChecked bool
	ChainThrough uint64
	ChainError   string
}

// OK reports whether nothing differs and the chain, if checked, is sound.
func (r VerifyReport) OK() bool {
	return len(r.Differ) == 0 && len(r.Unsettled) == 0 && r.ChainError == ""
}

// verifyCall is one request waiting for its response.
type verifyCall struct {
	msg    verifyReqMsg
	minSeq uint64 // send only once records through minSeq are sent
	done   chan struct{}
	once   sync.Once
	resp   verifyRespMsg
	err    error
}

func (v *verifyCall) fail(err error) {
	v.once.Do(func() { v.err = err; close(v.done) })
}

func (v *verifyCall) deliver(m verifyRespMsg) {
	v.once.Do(func() { v.resp = m; close(v.done) })
}

// trackedWrite is the range of one shipped record.
type trackedWrite struct {
	seq      uint64
	off, len int64
}

// writeTracker remembers the ranges of records shipped while a verify
// runs, so regions written during the pass are checked again.
type writeTracker struct{ writes []trackedWrite }

func (t *writeTracker) add(ws []trackedWrite) { t.writes = append(t.writes, ws...) }

// touched reports whether a record after seq overlapped r.
func (t *writeTracker) touched(r Region, after uint64) bool {
	for _, w := range t.writes {
		if w.seq > after && w.off < r.End() && r.Off < w.off+w.len {
			return true
		}
	}
	return false
}

// Verify compares the primary's store with the replica's consistent
// point region by region while writes go on: digests of the primary's
// regions are computed here, the secondary's are asked for over the
// replication link once every record written before the primary's read
// has been shipped, and a mismatch in a region that a record touched since
// the read is checked again in a later pass. It also asks the secondary
// to check its journal's hash chain. Only digests travel.
func (s *Sender) Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	if opts.RegionSize <= 0 {
		opts.RegionSize = DefaultVerifyRegionSize
	}
	opts.RegionSize = min(opts.RegionSize, MaxFramePayload)
	if opts.Passes <= 0 {
		opts.Passes = DefaultVerifyPasses
	}
	s.mu.Lock()
	if s.st.closed || !s.st.connected || s.st.sync != nil {
		s.mu.Unlock()
		return VerifyReport{}, ErrNotProtected
	}
	if s.tracker != nil {
		s.mu.Unlock()
		return VerifyReport{}, errors.New("replication: a verify is already running")
	}
	tr := &writeTracker{}
	s.tracker = tr
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.tracker = nil
		s.mu.Unlock()
	}()

	var rep VerifyReport
	size := s.src.Size()
	var todo []Region
	for off := int64(0); off < size; off += opts.RegionSize {
		todo = append(todo, Region{Off: off, Len: min(opts.RegionSize, size-off)})
	}
	rep.Regions = len(todo)
	buf := make([]byte, opts.RegionSize)
	checkChain := true
	for pass := 0; pass < opts.Passes && len(todo) > 0; pass++ {
		var again []Region
		for i := 0; i < len(todo); i += verifyBatch {
			batch := todo[i:min(i+verifyBatch, len(todo))]
			retry, err := s.verifyBatch(ctx, batch, buf, checkChain, tr, &rep)
			if err != nil {
				return rep, err
			}
			checkChain = false
			again = append(again, retry...)
		}
		todo = again
	}
	rep.Unsettled = todo
	return rep, nil
}

// verifyBatch compares one batch of regions and returns those to check
// again.
func (s *Sender) verifyBatch(ctx context.Context, batch []Region, buf []byte, checkChain bool, tr *writeTracker, rep *VerifyReport) ([]Region, error) {
	var lastErr error
	for attempt := 0; attempt < verifyAttempts; attempt++ {
		before, err := s.src.Head(ctx)
		if err != nil {
			return nil, fmt.Errorf("verify: read journal head: %w", err)
		}
		mine := make([][digestSize]byte, len(batch))
		for i, r := range batch {
			if _, err := s.src.ReadAt(buf[:r.Len], r.Off); err != nil {
				return nil, fmt.Errorf("verify: read primary off=%d len=%d: %w", r.Off, r.Len, err)
			}
			mine[i] = sha256.Sum256(buf[:r.Len])
		}
		after, err := s.src.Head(ctx)
		if err != nil {
			return nil, fmt.Errorf("verify: read journal head: %w", err)
		}
		resp, err := s.requestDigests(ctx, verifyReqMsg{ID: rand.Uint64(), CheckChain: checkChain, Regions: batch}, after.Seq)
		if errors.Is(err, errLinkDown) {
			lastErr = err
			if err := s.waitConnected(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(resp.Digests) != len(batch) {
			return nil, fmt.Errorf("%w: verify response with %d digests for %d regions", ErrBadFrame, len(resp.Digests), len(batch))
		}
		if checkChain {
			rep.ChainChecked, rep.ChainThrough, rep.ChainError = resp.ChainChecked, resp.ChainThrough, resp.ChainError
		}
		rep.Seq = resp.Seq
		var again []Region
		s.mu.Lock()
		for i, r := range batch {
			switch {
			case mine[i] == resp.Digests[i]:
			case resp.Seq < after.Seq || tr.touched(r, before.Seq):
				again = append(again, r)
			default:
				rep.Differ = append(rep.Differ, r)
			}
		}
		s.mu.Unlock()
		return again, nil
	}
	return nil, fmt.Errorf("verify: %w", lastErr)
}

// requestDigests queues a verify request for the writer, which sends it
// once records through minSeq are on the wire, and waits for the answer.
func (s *Sender) requestDigests(ctx context.Context, m verifyReqMsg, minSeq uint64) (verifyRespMsg, error) {
	v := &verifyCall{msg: m, minSeq: minSeq, done: make(chan struct{})}
	s.mu.Lock()
	if s.st.closed || !s.st.connected {
		s.mu.Unlock()
		return verifyRespMsg{}, errLinkDown
	}
	s.verifies[m.ID] = v
	s.vqueue = append(s.vqueue, v)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	defer func() {
		s.mu.Lock()
		delete(s.verifies, m.ID)
		s.mu.Unlock()
	}()
	select {
	case <-v.done:
		return v.resp, v.err
	case <-ctx.Done():
		return verifyRespMsg{}, ctx.Err()
	}
}

// waitConnected waits for the sender to be connected again.
func (s *Sender) waitConnected(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.st.closed {
			s.mu.Unlock()
			return ErrClosed
		}
		if s.st.connected && s.st.sync == nil {
			s.mu.Unlock()
			return nil
		}
		ch := s.ackCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// deliverVerify hands a response to its caller.
func (s *Sender) deliverVerify(m verifyRespMsg) {
	s.mu.Lock()
	v := s.verifies[m.ID]
	s.mu.Unlock()
	if v != nil {
		v.deliver(m)
	}
}

// failVerifies fails every pending verify request (the link dropped).
func (s *Sender) failVerifies(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.verifies {
		v.fail(err)
	}
	s.vqueue = nil
}

// sendVerifies sends the queued requests whose records are on the wire.
func (w *streamer) sendVerifies(ctx context.Context, sentThrough uint64) error {
	s := w.s
	s.mu.Lock()
	var ready []*verifyCall
	rest := s.vqueue[:0]
	for _, v := range s.vqueue {
		if v.minSeq <= sentThrough {
			ready = append(ready, v)
		} else {
			rest = append(rest, v)
		}
	}
	s.vqueue = rest
	s.mu.Unlock()
	for _, v := range ready {
		if err := w.send(ctx, frameVerifyReq, v.msg.encode(), 0); err != nil {
			return err
		}
	}
	return nil
}
