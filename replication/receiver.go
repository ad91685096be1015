package replication

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/tandem-dr/tandem/journal"
)

// Group commit bounds: the receiver appends several records frames with
// one AppendReceived while more are already buffered, up to these.
const (
	groupMaxBytes    = 32 << 20
	streamMaxBytes   = 8 << 20 // a group of the pipelined path (two may be in memory)
	groupMaxRecords  = 64 << 10
	ackEveryInterval = 250 * time.Millisecond
)

// A sync's regions are made durable (SyncProgress: an fdatasync of the
// staging file and one of the journal's metadata) every progressEvery
// bytes, or progressInterval after the last time where the link is
// slower: often enough that a dropped link re-sends little, rarely enough
// that the fdatasyncs, which the receiver waits for, cost a fast link
// little (one after every 4 MiB region held an initial sync of 1 GiB to
// about 6 s here; one every 64 MiB, under 5).
const (
	progressEvery    = 64 << 20
	progressInterval = 250 * time.Millisecond
)

// errProtocol is a peer's frame that is valid but out of place.
var errProtocol = errors.New("replication: protocol violation")

// receiver drives one replica disk's Sink from one connection.
type receiver struct {
	sink    Sink
	log     *slog.Logger
	conn    net.Conn
	fr      *frameReader
	fw      *frameWriter
	timeout time.Duration

	st   SinkState // as far as the sink has durably confirmed
	next Position  // chain position after the pending records

	pending      []journal.Record // verified, not yet appended
	pendingBytes int
	copyEnd      int64 // end of the last region frame of the sync
	progressed   int64 // copyEnd at the last SyncProgress
	lastProgress time.Time
	lastAck      time.Time
	vbuf         []byte
	committed    uint64 // ID of the last sync committed on this connection

	// ap is the pipelined path of a streaming connection (see stream.go):
	// the appender goroutine appends (or, in a sync, stages) what the
	// receiver hands over while the receiver reads the next frames.
	ap appender

	policy func(context.Context, Policy) // ServerConfig.Policy for this disk

	// reconciled is set once this connection answered a reconcile: from
	// then until a resync from the reconcile's point begins, nothing is
	// acknowledged (the state the primary would learn is the one it is
	// about to take back).
	reconciled     bool
	reconcileAfter uint64
}

// Policy is the part of a disk's protection policy that the secondary
// acts on, as the primary sends it.
type Policy struct {
	// Retention is how long records are kept, by their times; 0 keeps
	// every record.
	Retention time.Duration
	// Clock is the primary's clock minus this site's, as measured when
	// the policy arrived (late by the one-way delay of the link); 0 from
	// a primary before version 3. Records' times are the primary's.
	Clock time.Duration
}

// maxRetention bounds a received retention (a century), so that it
// converts to a Duration.
const maxRetention = 100 * 365 * 24 * time.Hour

// refusal is an error the receiver reports to the primary with an error
// frame before closing.
type refusal struct {
	code uint16
	err  error
}

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

func refuse(code uint16, err error) error { return &refusal{code: code, err: err} }

// run serves frames until the connection ends or a frame is refused.
func (r *receiver) run(ctx context.Context) (err error) {
	r.next = r.st.Head
	if r.st.Sync != nil {
		r.copyEnd = r.st.Sync.CopiedThrough
		r.progressed = r.copyEnd
	}
	r.startAppender(ctx)
	defer func() {
		if aerr := r.stopAppender(); aerr != nil {
			err = aerr // the appender's refusal is the cause
		}
	}()
	for {
		_ = r.conn.SetReadDeadline(time.Now().Add(r.timeout))
		f, err := r.fr.next()
		if err != nil {
			if errors.Is(err, ErrBadFrame) {
				return refuse(errCodeProtocol, err)
			}
			return err
		}
		if f.typ == frameRecords && r.streaming() {
			if err := r.onStreamRecords(f); err != nil {
				return err
			}
			continue
		}
		// Anything else sees every record before it durable.
		if err := r.drain(); err != nil {
			return err
		}
		if f.typ != frameRecords {
			if err := r.flush(ctx); err != nil {
				return err
			}
		}
		if err := r.handle(ctx, f); err != nil {
			return err
		}
		if r.fr.buffered() && time.Since(r.lastAck) < ackEveryInterval &&
			r.pendingBytes < groupMaxBytes && len(r.pending) < groupMaxRecords &&
			r.copyEnd-r.progressed < progressEvery {
			continue // more is waiting: group it
		}
		if err := r.flush(ctx); err != nil {
			return err
		}
		if r.copyEnd-r.progressed >= progressEvery || time.Since(r.lastProgress) >= progressInterval {
			if err := r.progress(ctx); err != nil {
				return err
			}
		}
		if err := r.ack(); err != nil {
			return err
		}
	}
}

// handle applies one frame (records only to the pending group).
func (r *receiver) handle(ctx context.Context, f frame) error {
	switch f.typ {
	case frameRecords:
		return r.onRecords(f.payload)
	case framePing:
		_, err := decodePing(f.payload)
		if err != nil {
			return refuse(errCodeProtocol, err)
		}
		r.lastAck = time.Time{} // answer now
		// The primary pings when it has nothing to send: every group is
		// done (drained), so the frame buffers may go.
		if len(r.pending) == 0 {
			r.fr.idle()
		}
		return nil
	case framePolicy:
		m, err := decodePolicy(f.payload)
		if err != nil {
			return refuse(errCodeProtocol, err)
		}
		p := Policy{Retention: maxRetention}
		if m.Retention < uint64(maxRetention/time.Second) {
			p.Retention = time.Duration(m.Retention) * time.Second
		}
		if m.HasNow {
			p.Clock = time.Unix(0, m.Now).Sub(time.Now())
		}
		if r.policy != nil {
			r.policy(ctx, p)
		}
		return nil
	case frameSyncBegin:
		m, err := decodeSyncBegin(f.payload)
		if err != nil {
			return refuse(errCodeProtocol, err)
		}
		// A resync after a reconcile starts from the reconcile's point,
		// and may have its base before the consistent point: it takes
		// back the records past it.
		rewind := r.reconciled && m.HasAfter && !m.Full && m.After <= r.reconcileAfter
		if m.Base.Seq < r.st.Consistent && r.st.Initialized && !rewind {
			return refuse(errCodeProtocol, fmt.Errorf("%w: sync base seq=%d before consistent point seq=%d", errProtocol, m.Base.Seq, r.st.Consistent))
		}
		info := SyncInfo{ID: m.ID, Full: m.Full, Base: m.Base, Total: m.Total, Rewind: rewind, After: m.After}
		if err := r.sink.BeginSync(ctx, info); err != nil {
			return refuse(errCodeSink, fmt.Errorf("begin sync base seq=%d: %w", m.Base.Seq, err))
		}
		r.log.Info("replication: sync begins", logSync, fmt.Sprintf("%016x", m.ID), "full", m.Full, "base", m.Base.Seq, "bytes", m.Total,
			"rewind", rewind)
		if rewind {
			r.st.Consistent = min(r.st.Consistent, m.After)
		}
		r.reconciled = false
		r.st.Sync = &info
		r.st.Head = m.Base
		r.next = m.Base
		r.copyEnd, r.progressed = 0, 0
		r.lastAck = time.Time{}
		return nil
	case frameRegion:
		id, off, data, err := decodeRegion(f.payload)
		if err != nil {
			return refuse(errCodeProtocol, err)
		}
		if err := r.checkRegion(id, off, int64(len(data))); err != nil {
			return err
		}
		// Staged by the appender while the next frame is read; the next
		// frame (or progress) waits for it first.
		r.copyEnd = off + int64(len(data))
		return r.handOverJob(&regionJob{off: off, data: data, buf: r.fr.take(f)})
	case frameRegionZero:
		m, err := decodeRegionZero(f.payload)
		if err != nil {
			return refuse(errCodeProtocol, err)
		}
		if err := r.checkRegion(m.ID, m.Off, m.Len); err != nil {
			return err
		}
		if r.st.Sync.Full {
			return refuse(errCodeProtocol, fmt.Errorf("%w: zero range in a full sync", errProtocol))
		}
		if err := r.sink.ZeroRegion(ctx, m.Off, m.Len); err != nil {
			return refuse(errCodeSink, fmt.Errorf("zero region off=%d len=%d: %w", m.Off, m.Len, err))
		}
		r.copyEnd = m.Off + m.Len
		return nil
	case frameSyncEnd:
		m, err := decodeSyncEnd(f.payload)
		if err != nil {
			return refuse(errCodeProtocol, err)
		}
		s := r.st.Sync
		if s == nil || s.ID != m.ID || s.Ended {
			return refuse(errCodeProtocol, fmt.Errorf("%w: sync end for sync %016x not in progress", errProtocol, m.ID))
		}
		if m.End.Seq < s.Base.Seq || (m.End.Seq == s.Base.Seq && m.End.Sum != s.Base.Sum) {
			return refuse(errCodeProtocol, fmt.Errorf("%w: sync end seq=%d before base seq=%d", errProtocol, m.End.Seq, s.Base.Seq))
		}
		if m.End.Seq < r.st.Head.Seq {
			return refuse(errCodeProtocol, fmt.Errorf("%w: sync end seq=%d before head seq=%d", errProtocol, m.End.Seq, r.st.Head.Seq))
		}
		if err := r.progress(ctx); err != nil {
			return err
		}
		if err := r.sink.EndCopy(ctx, m.End); err != nil {
			return refuse(errCodeSink, fmt.Errorf("end sync copy at seq=%d: %w", m.End.Seq, err))
		}
		s.Ended, s.End = true, m.End
		return r.maybeCommit(ctx)
	case frameReconcile:
		m, err := decodeReconcile(f.payload)
		if err != nil {
			return refuse(errCodeProtocol, err)
		}
		return r.onReconcile(ctx, m)
	case frameVerifyReq:
		m, err := decodeVerifyReq(f.payload)
		if err != nil {
			return refuse(errCodeProtocol, err)
		}
		return r.onVerify(ctx, m)
	case frameError:
		return fmt.Errorf("%w: %v", ErrRefused, peerError(f.payload))
	default:
		return refuse(errCodeProtocol, fmt.Errorf("%w: unexpected %s frame", errProtocol, f.typ))
	}
}

// checkRegion checks a region frame against the sync in progress: its
// ID, the disk's bounds and increasing offsets.
func (r *receiver) checkRegion(id uint64, off, n int64) error {
	s := r.st.Sync
	switch {
	case s == nil || s.ID != id:
		return refuse(errCodeProtocol, fmt.Errorf("%w: region for sync %016x not in progress", errProtocol, id))
	case s.Ended:
		return refuse(errCodeProtocol, fmt.Errorf("%w: region after the copy ended", errProtocol))
	case off < r.copyEnd:
		return refuse(errCodeProtocol, fmt.Errorf("%w: region off=%d before the previous end %d", errProtocol, off, r.copyEnd))
	case n <= 0 || off > r.sink.Size() || n > r.sink.Size()-off:
		return refuse(errCodeProtocol, fmt.Errorf("%w: region off=%d len=%d outside the disk", errProtocol, off, n))
	}
	return nil
}

// onRecords decodes a records frame and verifies that it follows the
// chain with no gap; only then does it join the pending group. A bad
// frame discards the whole pending group: nothing of it is applied.
func (r *receiver) onRecords(p []byte) error {
	if s := r.st.Sync; s != nil && !s.Ended {
		return refuse(errCodeProtocol, fmt.Errorf("%w: records before the sync copy ended", errProtocol))
	}
	if r.st.Sync == nil && !r.st.Initialized {
		return refuse(errCodeProtocol, fmt.Errorf("%w: records before an initial sync", errProtocol))
	}
	n0 := len(r.pending)
	recs, err := decodeRecords(p, r.pending)
	if err != nil {
		r.pending = r.pending[:0]
		return refuse(errCodeCorrupt, err)
	}
	next, n, err := r.checkChain(recs[n0:], r.next)
	if err != nil {
		r.pending = r.pending[:0]
		return err
	}
	r.pendingBytes += n
	r.pending = recs
	r.next = next
	return nil
}

// checkChain verifies that recs follow position next with no gap, each
// against the sum before it (and, during a sync, that the sync's end
// record is the one announced). It returns the position after them and
// their data bytes, or the refusal.
func (r *receiver) checkChain(recs []journal.Record, next Position) (Position, int, error) {
	n := 0
	for i := range recs {
		rec := &recs[i]
		if rec.Seq != next.Seq+1 {
			return next, 0, refuse(errCodeCorrupt, fmt.Errorf("%w: record seq=%d, want seq=%d", journal.ErrCorrupt, rec.Seq, next.Seq+1))
		}
		if err := rec.Verify(next.Sum); err != nil {
			return next, 0, refuse(errCodeCorrupt, err)
		}
		if s := r.st.Sync; s != nil && rec.Seq == s.End.Seq && rec.Sum != s.End.Sum {
			return next, 0, refuse(errCodeCorrupt, fmt.Errorf("%w: record seq=%d sum %016x, sync end says %016x", journal.ErrCorrupt, rec.Seq, rec.Sum, s.End.Sum))
		}
		next = Position{Seq: rec.Seq, Sum: rec.Sum}
		n += len(rec.Data)
	}
	return next, n, nil
}

// flush appends the pending group, durably, and commits a sync whose end
// it reaches.
func (r *receiver) flush(ctx context.Context) error {
	if len(r.pending) == 0 {
		return nil
	}
	if err := r.sink.AppendReceived(ctx, r.pending); err != nil {
		first, last := r.pending[0].Seq, r.pending[len(r.pending)-1].Seq
		r.pending = r.pending[:0]
		return refuse(errCodeSink, fmt.Errorf("append received seq=%d..%d: %w", first, last, err))
	}
	clear(r.pending) // drop references to Data
	r.pending = r.pending[:0]
	r.pendingBytes = 0
	r.st.Head = r.next
	if r.st.Sync == nil {
		r.st.Consistent = r.st.Head.Seq
		return nil
	}
	return r.maybeCommit(ctx)
}

// maybeCommit commits the sync once its copy ended and the head reached
// its end.
func (r *receiver) maybeCommit(ctx context.Context) error {
	s := r.st.Sync
	if s == nil || !s.Ended || r.st.Head.Seq < s.End.Seq {
		return nil
	}
	if err := r.sink.CommitSync(ctx); err != nil {
		return refuse(errCodeSink, fmt.Errorf("commit sync through seq=%d: %w", r.st.Head.Seq, err))
	}
	r.log.Info("replication: sync committed", logSync, fmt.Sprintf("%016x", s.ID), "full", s.Full, logSeq, r.st.Head.Seq)
	r.committed = s.ID
	r.st.Sync = nil
	r.st.Initialized = true
	r.st.Consistent = r.st.Head.Seq
	r.lastAck = time.Time{}
	return nil
}

// progress makes the sync's regions durable up to the last received.
func (r *receiver) progress(ctx context.Context) error {
	s := r.st.Sync
	if s == nil || s.Ended || r.copyEnd <= r.progressed {
		return nil
	}
	if err := r.drain(); err != nil { // the last region staged
		return err
	}
	if err := r.sink.SyncProgress(ctx, r.copyEnd); err != nil {
		return refuse(errCodeSink, fmt.Errorf("sync progress through off=%d: %w", r.copyEnd, err))
	}
	r.progressed, r.lastProgress = r.copyEnd, time.Now()
	s.CopiedThrough = r.copyEnd
	return nil
}

// ack tells the primary what is durable.
func (r *receiver) ack() error {
	if r.reconciled {
		return nil // see reconciled
	}
	m := ackMsg{Head: r.st.Head.Seq, Consistent: r.st.Consistent, Syncing: r.st.Sync != nil, Committed: r.committed}
	if r.st.Sync != nil {
		m.CopiedThrough = r.st.Sync.CopiedThrough
	}
	_ = r.conn.SetWriteDeadline(time.Now().Add(r.timeout))
	if _, err := r.fw.write(frameAck, m.encode()); err != nil {
		return err
	}
	r.lastAck = time.Now()
	return nil
}

// onVerify answers a verify request with digests of the replica at its
// consistent point, and the chain check when asked for.
func (r *receiver) onVerify(ctx context.Context, m verifyReqMsg) error {
	resp := verifyRespMsg{ID: m.ID, Seq: r.st.Consistent, Digests: make([][digestSize]byte, len(m.Regions))}
	if r.st.Sync != nil {
		resp.Seq = 0 // no comparable point during a sync; the primary asks again
	}
	for i, reg := range m.Regions {
		if reg.Off > r.sink.Size() || reg.Len > r.sink.Size()-reg.Off {
			return refuse(errCodeProtocol, fmt.Errorf("%w: verify region off=%d len=%d outside the disk", errProtocol, reg.Off, reg.Len))
		}
		if cap(r.vbuf) < int(reg.Len) {
			r.vbuf = make([]byte, reg.Len)
		}
		b := r.vbuf[:reg.Len]
		if err := r.sink.ReadConsistent(ctx, b, reg.Off); err != nil {
			return refuse(errCodeSink, fmt.Errorf("verify: read replica off=%d len=%d: %w", reg.Off, reg.Len, err))
		}
		resp.Digests[i] = sha256.Sum256(b)
	}
	if cc, ok := r.sink.(ChainChecker); ok && m.CheckChain {
		resp.ChainChecked = true
		through, err := cc.CheckChain(ctx)
		resp.ChainThrough = through
		if err != nil {
			resp.ChainError = err.Error()
			r.log.Warn("replication: verify: journal chain broken", logErr, err, "through", through)
		}
	}
	_ = r.conn.SetWriteDeadline(time.Now().Add(r.timeout))
	_, err := r.fw.write(frameVerifyResp, resp.encode())
	return err
}

// onReconcile answers a reconcile with the ranges that the replica's
// records after m.After touched (Whole when the sink cannot list them).
func (r *receiver) onReconcile(ctx context.Context, m reconcileMsg) error {
	var resp rangesMsg
	rc, ok := r.sink.(RangeLister)
	if !ok {
		return refuse(errCodeDiverged, fmt.Errorf("%w: this replica cannot list its records' ranges", ErrNotAgreed))
	}
	regions, whole, err := rc.RangesAfter(ctx, m.After)
	if errors.Is(err, ErrNotAgreed) {
		return refuse(errCodeDiverged, fmt.Errorf("reconcile after seq=%d: %w", m.After.Seq, err))
	}
	if err != nil {
		return refuse(errCodeSink, fmt.Errorf("list ranges after seq=%d: %w", m.After.Seq, err))
	}
	resp.Whole = whole
	if !whole {
		resp.Regions = normalizeRegions(regions, r.sink.Size())
	}
	if len(resp.Regions) > maxRangesRegions {
		resp = rangesMsg{Whole: true}
	}
	r.log.Warn("replication: the primary lost records this replica holds; answering with the ranges they touched",
		"after", m.After.Seq, "head", r.st.Head.Seq, "regions", len(resp.Regions), "whole", resp.Whole)
	_ = r.conn.SetWriteDeadline(time.Now().Add(r.timeout))
	if _, err := r.fw.write(frameRanges, resp.encode()); err != nil {
		return err
	}
	r.reconciled, r.reconcileAfter = true, m.After.Seq
	return nil
}
