package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/tandem-dr/tandem/journal"
)

// zeroBlock is the granularity at which a sync skips zero data.
const zeroBlock = 64 << 10

var zeroes = make([]byte, zeroBlock)

// errBatchFull stops the reading of a batch that holds MaxBatchRecords
// records, or whose frame reached MaxBatchBytes.
var errBatchFull = errors.New("batch full")

// appendRecords appends to buf the records from seq from onwards in their
// wire form (journal.Record.AppendBinary's), each after fn accepted it,
// until buf holds limit bytes or more: straight from the source's stored
// records when it is a RecordAppender, else by way of ReadFrom. It
// returns buf and nil, or the error that stopped it (fn's, errBatchFull
// aside, or the source's).
func appendRecords(ctx context.Context, src Source, from uint64, buf []byte, limit int, fn func(journal.Record) error) ([]byte, error) {
	var err error
	if a, ok := src.(RecordAppender); ok {
		buf, err = a.AppendRecords(ctx, from, buf, limit, fn)
	} else {
		err = src.ReadFrom(ctx, from, func(r journal.Record) error {
			if err := fn(r); err != nil {
				return err
			}
			var err error
			if buf, err = r.AppendBinary(buf); err != nil {
				return fmt.Errorf("encode record seq=%d: %w", r.Seq, err)
			}
			if len(buf) >= limit {
				return errBatchFull
			}
			return nil
		})
	}
	if errors.Is(err, errBatchFull) {
		err = nil
	}
	return buf, err
}

// streamer is the writer side of one connection.
type streamer struct {
	s    *Sender
	conn net.Conn
	fw   *frameWriter
	lim  *limiter
	// version is the protocol version of the connection.
	version uint16
	buf     []byte // records payload
	rbuf    []byte // region payload: header room + RegionSize
	// track lists the ranges of the batch's records for a running verify.
	track []trackedWrite
	// prev is the last record sent (or the point shipping starts from):
	// each record read is verified against it before it is sent.
	prev Position
}

// writeLoop decides between resuming a sync, starting one and streaming,
// then streams records until the connection fails.
func (s *Sender) writeLoop(ctx context.Context, conn net.Conn, fw *frameWriter, st peerState) error {
	w := &streamer{s: s, conn: conn, fw: fw, lim: s.lim, version: st.version}
	s.mu.Lock()
	job := s.st.sync
	s.mu.Unlock()
	switch {
	case st.rewind:
		base, err := w.startSync(ctx, false, st.after)
		if err != nil {
			return err
		}
		w.prev = base
	case st.Sync != nil && job != nil && st.Sync.ID == job.info.ID:
		s.cfg.Logger.Info("replication: resuming sync", logDisk, s.cfg.Disk, logSync, fmt.Sprintf("%016x", job.info.ID),
			"copied_through", st.Sync.CopiedThrough, "ended", st.Sync.Ended)
		if !st.Sync.Ended {
			if err := w.copyRegions(ctx, job, st.Sync.CopiedThrough); err != nil {
				return err
			}
		}
		w.prev = st.Head
	case !st.Initialized:
		base, err := w.startSync(ctx, true, 0)
		if err != nil {
			return err
		}
		w.prev = base
	case st.Sync != nil:
		base, err := w.startSync(ctx, false, st.Consistent)
		if err != nil {
			return err
		}
		w.prev = base
	default:
		s.mu.Lock()
		s.st.sync = nil
		s.learnedLocked()
		release := uint64(0)
		if st.Consistent > s.st.srcAcked {
			release = st.Consistent
			s.st.srcAcked = release
		}
		s.mu.Unlock()
		if release > 0 {
			if err := s.src.Acked(ctx, release); err != nil {
				return fmt.Errorf("release acknowledged records through seq=%d: %w", release, err)
			}
		}
		w.prev = st.Head
	}
	return w.stream(ctx, w.prev.Seq+1)
}

// send encodes a frame, waits for the bandwidth limit and writes it.
func (w *streamer) send(ctx context.Context, typ frameType, payload []byte, raw int) error {
	b, err := w.fw.encode(typ, payload)
	if err != nil {
		return err
	}
	return w.sendFrame(ctx, typ, b, raw)
}

// sendFrame waits for the bandwidth limit and writes the encoded frame b.
func (w *streamer) sendFrame(ctx context.Context, typ frameType, b []byte, raw int) error {
	if err := w.lim.wait(ctx, len(b)); err != nil {
		return err
	}
	_ = w.conn.SetWriteDeadline(time.Now().Add(w.s.cfg.Timeout))
	if _, err := w.conn.Write(b); err != nil {
		return fmt.Errorf("write %s frame: %w", typ, err)
	}
	w.s.mu.Lock()
	w.s.st.rawBytes += uint64(raw)
	w.s.st.wireBytes += uint64(len(b))
	w.s.mu.Unlock()
	return nil
}

// startSync plans a sync at the source, announces it and copies its
// regions. It returns the sync's base.
func (w *streamer) startSync(ctx context.Context, full bool, after uint64) (Position, error) {
	s := w.s
	plan, err := s.src.StartSync(ctx, full, after)
	if err != nil {
		return Position{}, fmt.Errorf("plan sync (full=%v after seq=%d): %w", full, after, err)
	}
	job := &syncJob{plan: plan, regions: normalizeRegions(plan.Regions, s.src.Size()), started: time.Now()}
	for _, r := range job.regions {
		job.info.Total += r.Len
	}
	job.info.ID = rand.Uint64() | 1
	job.info.Full = full
	job.info.Base = plan.Base
	s.mu.Lock()
	s.st.diverged = false
	s.st.sync, s.st.copied = job, 0
	s.learnedLocked()
	s.st.head = max(s.st.head, plan.Base.Seq)
	s.st.sent = max(s.st.sent, plan.Base.Seq)
	s.mu.Unlock()
	s.cfg.Logger.Info("replication: sync starting", logDisk, s.cfg.Disk, logSync, fmt.Sprintf("%016x", job.info.ID),
		"full", full, "base", plan.Base.Seq, "regions", len(job.regions), "bytes", job.info.Total)
	m := syncBeginMsg{ID: job.info.ID, Full: full, Base: plan.Base, Total: job.info.Total,
		After: after, HasAfter: w.version >= 3}
	if err := w.send(ctx, frameSyncBegin, m.encode(), 0); err != nil {
		return Position{}, err
	}
	if err := w.copyRegions(ctx, job, 0); err != nil {
		return Position{}, err
	}
	return plan.Base, nil
}

// copyRegions sends the sync's regions from offset from, then SyncEnd
// with the source's head at the end of the copy. For a full sync zero
// blocks are skipped (the replica starts from zeroes); for a resync they
// are sent as zero ranges.
func (w *streamer) copyRegions(ctx context.Context, job *syncJob, from int64) error {
	s := w.s
	rs := s.cfg.RegionSize
	if cap(w.rbuf) < regionHeaderSize+rs {
		w.rbuf = make([]byte, regionHeaderSize+rs)
	}
	var scanned int64
	for _, r := range job.regions {
		if r.End() <= from {
			scanned += r.Len
			continue
		}
		off := r.Off
		if from > off {
			scanned += from - off
			off = from
		}
		for off < r.End() {
			n := min(int64(rs), r.End()-off)
			data := w.rbuf[regionHeaderSize : regionHeaderSize+n]
			if _, err := s.src.ReadAt(data, off); err != nil {
				return fmt.Errorf("read region off=%d len=%d: %w", off, n, err)
			}
			if err := w.sendChunk(ctx, job, off, data); err != nil {
				return err
			}
			off += n
			scanned += n
			s.mu.Lock()
			job.scanned = scanned
			s.mu.Unlock()
		}
	}
	end, err := s.src.Head(ctx)
	if err != nil {
		return fmt.Errorf("read journal head at end of copy: %w", err)
	}
	if end.Seq < job.info.Base.Seq {
		return fmt.Errorf("journal head seq=%d went back before sync base seq=%d", end.Seq, job.info.Base.Seq)
	}
	if err := w.send(ctx, frameSyncEnd, syncEndMsg{ID: job.info.ID, End: end}.encode(), 0); err != nil {
		return err
	}
	s.mu.Lock()
	job.ended, job.end = true, end
	s.st.head = max(s.st.head, end.Seq)
	s.mu.Unlock()
	return nil
}

// sendChunk sends one read chunk (which sits in w.rbuf after the header
// room) as runs of data and zero blocks. Each data run's frame header is
// written into the bytes just before it, which belong to the run before,
// already sent.
func (w *streamer) sendChunk(ctx context.Context, job *syncJob, off int64, data []byte) error {
	runStart, runZero := 0, false
	flush := func(end int) error {
		if end == runStart {
			return nil
		}
		if runZero {
			if job.info.Full {
				return nil
			}
			m := regionZeroMsg{ID: job.info.ID, Off: off + int64(runStart), Len: int64(end - runStart)}
			return w.send(ctx, frameRegionZero, m.encode(), 0)
		}
		// data[runStart-16:runStart] is the header room: w.rbuf before data
		// for the first run, the sent tail of the previous run otherwise.
		p := w.rbuf[runStart : regionHeaderSize+end]
		binary.BigEndian.PutUint64(p[0:], job.info.ID)
		binary.BigEndian.PutUint64(p[8:], uint64(off+int64(runStart)))
		return w.send(ctx, frameRegion, p, end-runStart)
	}
	for i := 0; i < len(data); i += zeroBlock {
		j := min(i+zeroBlock, len(data))
		z := bytes.Equal(data[i:j], zeroes[:j-i])
		if i == 0 {
			runZero = z
			continue
		}
		if z != runZero {
			if err := flush(i); err != nil {
				return err
			}
			runStart, runZero = i, z
		}
	}
	return flush(len(data))
}

// stream ships records from seq next onwards until the connection fails.
// A truncated journal turns into a resync on the same connection.
func (w *streamer) stream(ctx context.Context, next uint64) error {
	s := w.s
	var pingDue time.Time
	for {
		var n int
		var err error
		if err := w.sendVerifies(ctx, next-1); err != nil {
			return err
		}
		if err := w.holdForAck(ctx); err != nil {
			return err
		}
		s.mu.Lock()
		syncing := s.st.sync != nil
		s.mu.Unlock()
		if !syncing && s.src.NeedsResync() {
			err = fmt.Errorf("source needs resync: %w", ErrTruncated)
		} else {
			n, err = w.sendBatch(ctx, &next)
		}
		if errors.Is(err, ErrTruncated) || errors.Is(err, journal.ErrReleased) {
			s.mu.Lock()
			after := s.st.consistent
			s.mu.Unlock()
			s.cfg.Logger.Warn("replication: journal overflowed, resyncing dirty regions", logDisk, s.cfg.Disk,
				logSeq, next, "consistent", after, logErr, err)
			base, err := w.startSync(ctx, false, after)
			if err != nil {
				return err
			}
			w.prev, next = base, base.Seq+1
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			continue
		}
		s.mu.Lock()
		if len(s.st.inflight) == 0 && s.st.sync == nil && s.st.degraded {
			s.st.degraded = false
			s.cfg.Logger.Info("replication: secondary caught up, sync mode restored", logDisk, s.cfg.Disk)
		}
		s.mu.Unlock()
		now := time.Now()
		if now.After(pingDue) {
			if err := w.send(ctx, framePing, pingMsg{Head: next - 1}.encode(), 0); err != nil {
				return err
			}
			pingDue = now.Add(s.cfg.Heartbeat)
		}
		if err := w.wait(ctx, next-1, pingDue); err != nil {
			return err
		}
	}
}

// Records frames in flight: with MaxInflightFrames of them unacknowledged
// the sender waits for an acknowledgement (at most inflightWait) before
// it reads the next batch, so that while the secondary is busy the
// records gather into fewer, larger frames. The receiver reads ahead of
// its appender (group commit), so the link's own backpressure no longer
// does this; by default four frames of up to MaxBatchBytes keep its
// pipeline full.
const inflightWait = 50 * time.Millisecond

// holdForAck waits while MaxInflightFrames records frames are
// unacknowledged, until an acknowledgement moves or inflightWait passes.
func (w *streamer) holdForAck(ctx context.Context) error {
	s := w.s
	s.mu.Lock()
	full := len(s.st.inflight) >= s.cfg.MaxInflightFrames
	acked := s.ackCh
	s.mu.Unlock()
	if !full {
		return nil
	}
	t := time.NewTimer(inflightWait)
	defer t.Stop()
	select {
	case <-acked:
	case <-t.C:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	return nil
}

// wait blocks until the source's head passes seq, a verify request
// arrives or the deadline passes.
func (w *streamer) wait(ctx context.Context, seq uint64, deadline time.Time) error {
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-w.s.kick:
			cancel()
		case <-stop:
		}
	}()
	err := w.s.src.WaitAfter(wctx, seq)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("wait for journal after seq=%d: %w", seq, err)
	}
	return nil
}

// A batch smaller than a quarter of MaxBatchBytes waits up to BatchDelay
// for more records, looking again every gatherPoll: a few wake-ups per
// frame, where waking on each record would cost one per record.
const gatherPoll = time.Millisecond

// gather adds the records that arrive within BatchDelay to a small batch
// of *count records, the next one to read being *want; fn (sendBatch's)
// advances both.
func (w *streamer) gather(ctx context.Context, buf []byte, want *uint64, count *int, fn func(journal.Record) error) ([]byte, error) {
	s := w.s
	deadline := time.Now().Add(s.cfg.BatchDelay)
	t := time.NewTimer(gatherPoll)
	defer t.Stop()
	for len(buf) < s.cfg.MaxBatchBytes/4 && *count < s.cfg.MaxBatchRecords {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		t.Reset(min(left, gatherPoll))
		select {
		case <-t.C:
		case <-ctx.Done():
			return buf, context.Cause(ctx)
		}
		var err error
		if buf, err = appendRecords(ctx, s.src, *want, buf, s.cfg.MaxBatchBytes, fn); err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// sendBatch reads up to a batch of records from *next and sends them as
// one frame. It returns the number of records sent.
func (w *streamer) sendBatch(ctx context.Context, next *uint64) (int, error) {
	s := w.s
	// The frame header's room, then the payload: the record count and
	// the records, encoded in place (see encodeInPlace).
	var room [frameHeaderSize + 4]byte
	buf := append(w.buf[:0], room[:]...)
	count, dataBytes := 0, 0
	var first time.Time
	track := w.track[:0]
	want := *next
	prev := w.prev
	fn := func(r journal.Record) error {
		if count >= s.cfg.MaxBatchRecords {
			return errBatchFull
		}
		if r.Seq != want {
			return fmt.Errorf("source gave seq=%d, want %d", r.Seq, want)
		}
		// The source verified r (a damaged record is never shipped:
		// shipping holds before it). A sound record that does not follow
		// the secondary's head means the histories differ.
		if r.PrevSum != prev.Sum {
			return fmt.Errorf("%w: record seq=%d follows sum %016x, the secondary holds %016x", ErrDiverged, r.Seq, r.PrevSum, prev.Sum)
		}
		prev = Position{Seq: r.Seq, Sum: r.Sum}
		if count == 0 {
			first = r.Time
		}
		if r.Kind == journal.KindWrite || r.Kind == journal.KindZero || r.Kind == journal.KindTrim {
			track = append(track, trackedWrite{seq: r.Seq, off: r.Off, len: r.Len})
		}
		count++
		dataBytes += len(r.Data)
		want++
		return nil
	}
	buf, err := appendRecords(ctx, s.src, want, buf, s.cfg.MaxBatchBytes, fn)
	if err == nil && count > 0 && s.cfg.BatchDelay > 0 {
		buf, err = w.gather(ctx, buf, &want, &count, fn)
	}
	w.buf, w.track = buf, track
	if count > 0 && err != nil && (errors.Is(err, journal.ErrCorrupt) || errors.Is(err, ErrDiverged)) {
		err = nil // ship the sound records before it; the next batch stops there
	}
	if err != nil {
		if errors.Is(err, ErrTruncated) || errors.Is(err, journal.ErrReleased) {
			return 0, err
		}
		return 0, fmt.Errorf("read journal from seq=%d: %w", *next, err)
	}
	if count == 0 {
		return 0, nil
	}
	binary.BigEndian.PutUint32(buf[frameHeaderSize:], uint32(count))
	s.mu.Lock()
	s.st.diverged = false
	s.st.inflight = append(s.st.inflight, batchMeta{last: want - 1, first: first, bytes: uint64(dataBytes)})
	s.st.sent = want - 1
	s.st.head = max(s.st.head, want-1)
	if s.tracker != nil {
		s.tracker.add(track)
	}
	s.mu.Unlock()
	frame, err := w.fw.encodeInPlace(frameRecords, buf)
	if err != nil {
		return 0, err
	}
	if err := w.sendFrame(ctx, frameRecords, frame, dataBytes); err != nil {
		return 0, err
	}
	*next = want
	w.prev = prev
	return count, nil
}
