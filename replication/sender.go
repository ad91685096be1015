package replication

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/tandem-dr/tandem/journal"
)

var (
	// ErrClosed is returned by a closed Sender's blocking calls.
	ErrClosed = errors.New("replication: sender closed")
	// ErrSyncTimeout is returned by WaitAcked under HoldWrites when the
	// secondary did not acknowledge within SyncTimeout.
	ErrSyncTimeout = errors.New("replication: secondary did not acknowledge in time")
	// ErrDiverged reports that the secondary holds records the primary
	// does not: the sites have diverged and nothing is shipped until an
	// operator resolves it (reprotect).
	ErrDiverged = errors.New("replication: sites diverged")
	// ErrRefused reports an error frame from the secondary.
	ErrRefused = errors.New("replication: refused by peer")
)

// Replication states as Status reports them.
const (
	StateInitialSync = "initial-sync"
	StateProtected   = "protected"
	StatePaused      = "paused"
	StateResync      = "resync"
)

// Sender ships one protected disk's journal to the secondary. Create it
// with NewSender, start it with Open and stop it with Close; it reconnects
// on its own after any failure.
type Sender struct {
	cfg      SenderConfig
	src      Source
	compress bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
	lim    *limiter // used by the writer of the current connection only

	mu       sync.Mutex
	st       senderState
	ackCh    chan struct{} // closed and replaced whenever acknowledgements move
	answered chan struct{} // closed once the secondary told what it holds (knownLocked)
	kick     chan struct{} // wakes the writer (verify requests), buffered 1
	verifies map[uint64]*verifyCall
	vqueue   []*verifyCall // requests waiting for the writer
	tracker  *writeTracker // non-nil while a verify runs
}

// senderState is the Sender's mutable state, under mu.
type senderState struct {
	open, closed bool
	connected    bool
	lastErr      string
	diverged     bool

	sync *syncJob // the sync in progress, nil when streaming

	head       uint64 // newest source head seen
	ackHead    uint64 // secondary's durable head
	consistent uint64 // secondary's consistent point
	copied     int64  // the sync's copy progress the secondary acknowledged
	srcAcked   uint64 // last seq passed to Source.Acked
	sent       uint64 // last seq sent on the current connection

	inflight []batchMeta // sent, not yet acknowledged, in order

	rawBytes, wireBytes uint64 // payload vs wire, since Open
	samples             []rateSample
	caughtUp            time.Time // last moment the secondary held the head
	rpoAlert            bool
	degraded            bool // sync mode fell back to async
}

// batchMeta is one records frame in flight.
type batchMeta struct {
	last  uint64
	first time.Time // time of its first record
	bytes uint64    // record data bytes
}

type rateSample struct {
	at    time.Time
	bytes uint64
}

// syncJob is an initial sync or resync as the primary runs it.
type syncJob struct {
	plan    SyncPlan
	info    SyncInfo
	regions []Region // sorted, merged, clipped
	scanned int64    // bytes of regions scanned so far
	ended   bool
	end     Position
	started time.Time
}

// NewSender checks cfg and returns a Sender that is not yet running.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Sender{
		cfg:      cfg,
		src:      cfg.Source,
		compress: cfg.Compress == CompressZstd,
		lim:      newLimiter(cfg.Bandwidth),
		ackCh:    make(chan struct{}),
		answered: make(chan struct{}),
		kick:     make(chan struct{}, 1),
		verifies: make(map[uint64]*verifyCall),
	}, nil
}

// Open starts the sender's goroutines: the connection loop (dial,
// handshake, sync or stream, reconnect with backoff) and a monitor that
// samples throughput and raises the RPO alert.
func (s *Sender) Open() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.open || s.st.closed {
		return errors.New("replication: sender already opened")
	}
	s.st.open = true
	s.st.caughtUp = time.Now()
	s.st.samples = []rateSample{{at: s.st.caughtUp}}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.run(ctx) }()
	go func() { defer s.wg.Done(); s.monitor(ctx) }()
	return nil
}

// Close stops the sender and waits for its goroutines, or for ctx. What
// the secondary has acknowledged stays acknowledged; the next Sender over
// the same source resumes from the secondary's durable head.
func (s *Sender) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.st.closed {
		s.mu.Unlock()
		return nil
	}
	s.st.closed = true
	cancel := s.cancel
	s.broadcastLocked()
	for _, v := range s.verifies {
		v.fail(ErrClosed)
	}
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close sender %s: %w", s.cfg.Disk, ctx.Err())
	}
}

// run is the connection loop.
func (s *Sender) run(ctx context.Context) {
	defer func() {
		s.mu.Lock()
		s.st.connected = false
		s.broadcastLocked()
		s.mu.Unlock()
	}()
	backoff := s.cfg.MinBackoff
	lastLogged := ""
	for ctx.Err() == nil {
		began := time.Now()
		flowed, err := s.session(ctx)
		// A connection refused right after its handshake (a corrupt record,
		// a full replica) keeps backing off like a failed dial.
		flowed = flowed && time.Since(began) > time.Second
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.st.connected = false
		if err != nil {
			s.st.lastErr = err.Error()
		}
		if errors.Is(err, ErrDiverged) {
			s.st.diverged = true // until records or a sync flow again
		}
		s.broadcastLocked()
		s.mu.Unlock()
		if flowed {
			backoff = s.cfg.MinBackoff
		}
		// The same failure again (the peer still away, the record still
		// damaged) is logged at Debug, not once per retry.
		msg := fmt.Sprint(err)
		switch {
		case msg == lastLogged:
			s.cfg.Logger.Debug("replication: still failing", logDisk, s.cfg.Disk, logErr, err, "backoff", backoff)
		case errors.Is(err, journal.ErrCorrupt):
			s.cfg.Logger.Error("replication: primary journal damaged, shipping held at the damaged record", logDisk, s.cfg.Disk, logErr, err)
		case errors.Is(err, ErrDiverged):
			s.cfg.Logger.Error("replication: sites diverged, nothing shipped until reprotect", logDisk, s.cfg.Disk, logErr, err)
		default:
			s.cfg.Logger.Warn("replication: link down, will reconnect", logDisk, s.cfg.Disk, logErr, err, "backoff", backoff)
		}
		lastLogged = msg
		// Jitter keeps two senders from retrying in step.
		d := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if backoff *= 2; backoff > s.cfg.MaxBackoff {
			backoff = s.cfg.MaxBackoff
		}
	}
}

// session runs one connection to its end. flowed reports whether the
// handshake succeeded.
func (s *Sender) session(parent context.Context) (flowed bool, err error) {
	conn, err := s.cfg.Dial(parent)
	if err != nil {
		return false, fmt.Errorf("dial secondary: %w", err)
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()

	fw, err := newFrameWriter(conn, s.compress)
	if err != nil {
		return false, err
	}
	defer fw.close()
	fr := newFrameReader(conn)
	defer fr.close()

	st, err := s.handshake(ctx, conn, fw, fr)
	if err != nil {
		return false, err
	}
	s.cfg.Logger.Info("replication: connected", logDisk, s.cfg.Disk, logRemote, conn.RemoteAddr().String(),
		"secondary_head", st.Head.Seq, "consistent", st.Consistent, "initialized", st.Initialized, "syncing", st.Sync != nil)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cancel(s.readLoop(ctx, conn, fr))
	}()
	werr := s.writeLoop(ctx, conn, fw, st)
	cancel(werr)
	wg.Wait()
	s.failVerifies(errLinkDown)
	err = context.Cause(ctx)
	if errors.Is(err, context.Canceled) && parent.Err() == nil {
		err = werr
	}
	return true, err
}

// peerState is what a handshake learned of the secondary.
type peerState struct {
	SinkState
	// version is the protocol version the secondary chose.
	version uint16
	// rewind is set after a reconcile: the connection starts with a
	// resync of the writes after `after`, which also takes back the
	// secondary's records past it.
	rewind bool
	after  uint64
}

// handshake sends Hello and reads Welcome, checking version and
// divergence, and records the secondary's state. A divergence is
// reconciled when both sides can (see reconcile).
func (s *Sender) handshake(ctx context.Context, conn net.Conn, fw *frameWriter, fr *frameReader) (peerState, error) {
	head, err := s.src.Head(ctx)
	if err != nil {
		return peerState{}, fmt.Errorf("read journal head: %w", err)
	}
	_ = conn.SetDeadline(time.Now().Add(s.cfg.Timeout))
	hello := helloMsg{MinVersion: MinProtocolVersion, MaxVersion: ProtocolVersion,
		Disk: s.cfg.Disk, Size: s.src.Size(), Head: head.Seq}
	if _, err := fw.write(frameHello, hello.encode()); err != nil {
		return peerState{}, err
	}
	f, err := fr.next()
	if err != nil {
		return peerState{}, fmt.Errorf("read welcome: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	switch f.typ {
	case frameWelcome:
	case frameError:
		return peerState{}, peerError(f.payload)
	default:
		return peerState{}, fmt.Errorf("%w: %s frame instead of welcome", ErrBadFrame, f.typ)
	}
	w, err := decodeWelcome(f.payload)
	if err != nil {
		return peerState{}, err
	}
	if w.Version < MinProtocolVersion || w.Version > ProtocolVersion {
		return peerState{}, fmt.Errorf("%w: secondary chose protocol version %d", ErrBadFrame, w.Version)
	}
	// Version 4 reads records frames whose CRC covers the header alone.
	fw.headerCRC = w.Version >= 4
	if w.Version >= 2 {
		p := policyMsg{Retention: uint64((s.cfg.Retention + time.Second - 1) / time.Second),
			Now: time.Now().UnixNano(), HasNow: w.Version >= 3}
		if _, err := fw.write(framePolicy, p.encode()); err != nil {
			return peerState{}, err
		}
	}
	st := w.State
	var diverged error
	switch {
	case st.Head.Seq > head.Seq || (st.Sync != nil && st.Sync.Base.Seq > head.Seq):
		diverged = fmt.Errorf("%w: secondary head seq=%d past primary head seq=%d", ErrDiverged, st.Head.Seq, head.Seq)
	case st.Head.Seq > 0 && (st.Sync == nil || st.Sync.Ended):
		// The secondary's head record must be the primary's record of
		// that seq, when the primary still keeps it.
		r, ok, err := s.recordAt(ctx, st.Head.Seq)
		if err != nil {
			return peerState{}, fmt.Errorf("read journal seq=%d: %w", st.Head.Seq, err)
		}
		if ok && r.Sum != st.Head.Sum {
			diverged = fmt.Errorf("%w: record seq=%d has sum %016x here, %016x at the secondary", ErrDiverged, st.Head.Seq, r.Sum, st.Head.Sum)
		}
	}
	ps := peerState{SinkState: st, version: w.Version}
	if diverged != nil {
		after, ok, err := s.reconcile(ctx, conn, fw, fr, w.Version, diverged)
		if err != nil {
			return peerState{}, err
		}
		if ok {
			diverged = nil
			ps.rewind, ps.after = true, after
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.head = max(s.st.head, head.Seq)
	if diverged != nil {
		s.st.diverged = true
		return peerState{}, diverged
	}
	s.st.connected = true
	// During a sync the secondary's records past its consistent point may
	// yet be discarded (a new sync replaces this one): they do not count
	// as held until the sync commits. After a reconcile nothing past the
	// point both sides agree on counts.
	switch {
	case ps.rewind:
		s.st.ackHead, s.st.consistent, s.st.sent = ps.after, ps.after, ps.after
	case st.Sync != nil:
		s.st.ackHead, s.st.consistent, s.st.sent = st.Consistent, st.Consistent, st.Head.Seq
	default:
		s.st.ackHead, s.st.consistent, s.st.sent = st.Head.Seq, st.Consistent, st.Head.Seq
	}
	s.st.inflight = s.st.inflight[:0]
	s.broadcastLocked()
	return ps, nil
}

// reconcile recovers from a divergence in which the secondary holds
// records that the primary does not: the primary crashed (a power cut)
// after shipping records it had not yet made durable itself, and
// restarted without them. Those writes were never flushed here, so
// losing them is within the primary's contract, but the replica holds
// them. With protocol version 3 and a Reconciler source, the primary asks
// the secondary for the ranges its records after the point both sides
// agree on touched, marks them dirty here (durably, so that a restart
// mid-way plans them again) and reports ok: the connection then starts
// with a resync of everything after that point, which takes the
// secondary's extra records back. Otherwise it reports !ok and the
// divergence stands until the disk is protected again.
func (s *Sender) reconcile(ctx context.Context, conn net.Conn, fw *frameWriter, fr *frameReader, version uint16, diverged error) (after uint64, ok bool, err error) {
	rc, able := s.src.(Reconciler)
	if version < 3 || !able {
		return 0, false, nil
	}
	agreed, ok, err := rc.Agreed(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("reconcile: %w", err)
	}
	if !ok {
		return 0, false, nil // never acknowledged: nothing to agree on
	}
	after = agreed.Seq
	_ = conn.SetDeadline(time.Now().Add(s.cfg.Timeout))
	defer conn.SetDeadline(time.Time{})
	if _, err := fw.write(frameReconcile, reconcileMsg{After: agreed}.encode()); err != nil {
		return 0, false, err
	}
	var m rangesMsg
	for m.Regions == nil && !m.Whole {
		f, err := fr.next()
		if err != nil {
			return 0, false, fmt.Errorf("read ranges: %w", err)
		}
		switch f.typ {
		case frameAck: // of the frames before: the state is the welcome's
			continue
		case frameRanges:
			if m, err = decodeRanges(f.payload); err != nil {
				return 0, false, err
			}
			if m.Regions == nil {
				m.Regions = []Region{}
			}
		case frameError:
			return 0, false, fmt.Errorf("%w (reconcile refused: %w)", diverged, peerError(f.payload))
		default:
			return 0, false, fmt.Errorf("%w: %s frame instead of ranges", ErrBadFrame, f.typ)
		}
	}
	regions := m.Regions
	if m.Whole {
		regions = []Region{{Off: 0, Len: s.src.Size()}}
	}
	regions = normalizeRegions(regions, s.src.Size())
	if err := rc.MarkDirty(ctx, regions); err != nil {
		return 0, false, fmt.Errorf("reconcile: mark the secondary's ranges dirty: %w", err)
	}
	var n int64
	for _, r := range regions {
		n += r.Len
	}
	s.cfg.Logger.Warn("replication: the secondary holds writes this site lost (a crash before they were flushed here); resyncing the regions they touched",
		logDisk, s.cfg.Disk, "cause", diverged, "agreed", after, "regions", len(regions), "bytes", n, "whole", m.Whole)
	return after, true, nil
}

// peerError turns an error frame into an error wrapping ErrRefused.
func peerError(p []byte) error {
	m, err := decodeError(p)
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: code %d: %s", ErrRefused, m.Code, m.Message)
}

// readLoop reads acknowledgements and verify responses until the
// connection fails. Every frame must arrive within Timeout: the writer
// pings an idle link and the secondary answers.
func (s *Sender) readLoop(ctx context.Context, conn net.Conn, fr *frameReader) error {
	for {
		_ = conn.SetReadDeadline(time.Now().Add(s.cfg.Timeout))
		f, err := fr.next()
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("read from secondary: %w", err)
		}
		switch f.typ {
		case frameAck:
			a, err := decodeAck(f.payload)
			if err != nil {
				return err
			}
			if err := s.onAck(ctx, a); err != nil {
				return err
			}
		case frameVerifyResp:
			m, err := decodeVerifyResp(f.payload)
			if err != nil {
				return err
			}
			s.deliverVerify(m)
		case frameError:
			return peerError(f.payload)
		default:
			return fmt.Errorf("%w: unexpected %s frame from secondary", ErrBadFrame, f.typ)
		}
	}
}

// onAck records an acknowledgement: pops what it covers, finishes a sync
// that committed, releases consistent records at the source and wakes
// WaitAcked.
func (s *Sender) onAck(ctx context.Context, a ackMsg) error {
	s.mu.Lock()
	if sent := s.st.sent; a.Head > sent {
		s.mu.Unlock()
		return fmt.Errorf("%w: ack of seq=%d never sent (sent through %d)", ErrBadFrame, a.Head, sent)
	}
	// The last failure stays reported until replication moves forward
	// again: a secondary that refuses every connection (a full file
	// system) must not look healthy between two of them.
	if a.Head > s.st.ackHead || a.CopiedThrough > s.st.copied {
		s.st.lastErr = ""
	}
	if a.Head > s.st.ackHead {
		s.st.ackHead = a.Head
	}
	s.st.copied = max(s.st.copied, a.CopiedThrough)
	i := 0
	for i < len(s.st.inflight) && s.st.inflight[i].last <= s.st.ackHead {
		i++
	}
	s.st.inflight = append(s.st.inflight[:0], s.st.inflight[i:]...)
	if a.Consistent > s.st.consistent {
		s.st.consistent = a.Consistent
	}
	// Only an ack naming the sync's ID proves it committed: an older ack
	// (sent before the secondary saw SyncBegin) may look the same.
	j := s.st.sync
	committed := j != nil && a.Committed == j.info.ID && !a.Syncing
	release := uint64(0)
	if !a.Syncing && s.st.consistent > s.st.srcAcked {
		release = s.st.consistent
		s.st.srcAcked = release
	}
	if !committed {
		// Writes waiting in sync mode go on now, not after the release
		// below (a journal hold written to badger).
		s.broadcastLocked()
	}
	s.mu.Unlock()
	// The source learns of the commit before the sync counts as done, so
	// that the writer, which asks Source.NeedsResync once no sync runs,
	// sees the dirty regions the sync covered already cleared.
	if committed {
		if err := s.src.SyncCommitted(ctx, j.plan); err != nil {
			return fmt.Errorf("record committed sync base seq=%d: %w", j.plan.Base.Seq, err)
		}
	}
	if release > 0 {
		if err := s.src.Acked(ctx, release); err != nil {
			return fmt.Errorf("release acknowledged records through seq=%d: %w", release, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if committed && s.st.sync == j {
		s.st.sync = nil
		s.cfg.Logger.Info("replication: sync committed", logDisk, s.cfg.Disk, logSync, fmt.Sprintf("%016x", j.info.ID),
			"full", j.info.Full, logSeq, a.Consistent, "took", time.Since(j.started).Round(time.Millisecond))
	}
	if s.st.sync == nil && s.st.ackHead >= s.st.head {
		s.st.caughtUp = time.Now()
		s.st.lastErr = ""
	}
	if s.st.degraded && s.st.sync == nil && len(s.st.inflight) == 0 {
		s.st.degraded = false
		s.cfg.Logger.Info("replication: secondary caught up, sync mode restored", logDisk, s.cfg.Disk)
	}
	s.broadcastLocked()
	return nil
}

// broadcastLocked wakes every WaitAcked.
func (s *Sender) broadcastLocked() {
	close(s.ackCh)
	s.ackCh = make(chan struct{})
}

// normalizeRegions sorts, clips to [0, size) and merges regions.
func normalizeRegions(rs []Region, size int64) []Region {
	out := make([]Region, 0, len(rs))
	for _, r := range rs {
		if r.Off < 0 {
			r.Len += r.Off
			r.Off = 0
		}
		if r.Off >= size || r.Len <= 0 {
			continue
		}
		if r.End() > size {
			r.Len = size - r.Off
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Off < out[j].Off })
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 && r.Off <= merged[n-1].End() {
			if r.End() > merged[n-1].End() {
				merged[n-1].Len = r.End() - merged[n-1].Off
			}
			continue
		}
		merged = append(merged, r)
	}
	return merged
}

// Answered is closed once a secondary has first answered and the sender
// knows what it holds: from then on Status reports the disk's state
// (initial-sync, resync, protected), where before it reports paused.
func (s *Sender) Answered() <-chan struct{} { return s.answered }

// knownLocked reports whether a handshake has told what the secondary
// holds (a sync started or resumed, or a consistent copy to stream onto):
// until then the disk is not called protected. s.mu held.
func (s *Sender) knownLocked() bool {
	select {
	case <-s.answered:
		return true
	default:
		return false
	}
}

// learnedLocked records that a handshake told what the secondary holds.
// s.mu held.
func (s *Sender) learnedLocked() {
	if !s.knownLocked() {
		close(s.answered)
	}
}
