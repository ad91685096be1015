package replication

import (
	"context"
	"errors"
	"time"

	"github.com/tandem-dr/tandem/journal"
)

// Status is a Sender's replication state, for `tandem status`.
type Status struct {
	Disk string
	// State is StateInitialSync, StateResync, StateProtected or
	// StatePaused (closed, or diverged).
	State string
	// Connected is true while a connection to the secondary is up.
	Connected bool
	// SyncPercent is the share of the sync's regions copied (initial-sync
	// and resync only).
	SyncPercent float64
	// HeadSeq is the primary journal's newest record; AckedSeq the newest
	// the secondary holds durably; ConsistentSeq the secondary's
	// consistent point.
	HeadSeq, AckedSeq, ConsistentSeq uint64
	// LagSeconds is the age of the oldest record the secondary does not
	// hold (during a sync, the time since it started); LagRecords and
	// LagBytes count what it does not hold.
	LagSeconds float64
	LagRecords uint64
	LagBytes   uint64
	// Throughput is data (records and sync regions) sent per second over
	// the last few seconds.
	Throughput float64
	// RawBytes counts record and region data sent since Open; WireBytes
	// the frames that carried them, after compression.
	RawBytes, WireBytes uint64
	// RPOAlert is true while LagSeconds passes the configured RPOAlert.
	RPOAlert bool
	// SyncDegraded is true while sync mode has fallen back to async
	// because the secondary was away (FallbackAsync).
	SyncDegraded bool
	// LastError is the last failure of the link or of the secondary,
	// kept until replication moves forward again.
	LastError string
}

// Status reports the replication state. It reads the source's head and,
// when the secondary is behind, the time of the oldest unacknowledged
// record.
func (s *Sender) Status(ctx context.Context) Status {
	head, herr := s.src.Head(ctx)
	now := time.Now()
	s.mu.Lock()
	if herr == nil {
		s.st.head = max(s.st.head, head.Seq)
	}
	st := Status{
		Disk:          s.cfg.Disk,
		Connected:     s.st.connected,
		HeadSeq:       s.st.head,
		AckedSeq:      s.st.ackHead,
		ConsistentSeq: s.st.consistent,
		RawBytes:      s.st.rawBytes,
		WireBytes:     s.st.wireBytes,
		RPOAlert:      s.st.rpoAlert,
		SyncDegraded:  s.st.degraded,
		LastError:     s.st.lastErr,
		Throughput:    s.throughputLocked(now),
	}
	var oldest time.Time
	var inflightBytes uint64
	for i, b := range s.st.inflight {
		if i == 0 {
			oldest = b.first
		}
		inflightBytes += b.bytes
	}
	job := s.st.sync
	switch {
	case !s.st.open || s.st.closed || s.st.diverged:
		st.State = StatePaused
	case job != nil && job.info.Full:
		st.State = StateInitialSync
	case job != nil:
		st.State = StateResync
	case !s.knownLocked():
		st.State = StatePaused // no secondary has answered yet
	default:
		st.State = StateProtected
	}
	if job != nil && job.info.Total > 0 {
		st.SyncPercent = 100 * float64(job.scanned) / float64(job.info.Total)
	} else if job != nil {
		st.SyncPercent = 100
	}
	if job != nil && job.ended {
		st.SyncPercent = 100
	}
	caughtUp := s.st.caughtUp
	s.mu.Unlock()

	if st.HeadSeq > st.AckedSeq {
		st.LagRecords = st.HeadSeq - st.AckedSeq
	}
	switch {
	case job != nil:
		st.LagSeconds = now.Sub(job.started).Seconds()
	case st.LagRecords == 0:
	case !oldest.IsZero():
		st.LagSeconds = now.Sub(oldest).Seconds()
	default:
		t, err := s.recordTime(ctx, st.AckedSeq+1)
		if err != nil || t.IsZero() {
			t = caughtUp
		}
		st.LagSeconds = max(0, now.Sub(t).Seconds())
	}
	if bl, ok := s.src.(Backlogger); ok && st.LagRecords > 0 {
		if _, b, err := bl.Backlog(ctx, st.AckedSeq); err == nil {
			st.LagBytes = b
		}
	} else {
		st.LagBytes = inflightBytes
	}
	return st
}

var errStop = errors.New("stop")

// recordTime reads the time of record seq.
func (s *Sender) recordTime(ctx context.Context, seq uint64) (time.Time, error) {
	r, _, err := s.recordAt(ctx, seq)
	return r.Time, err
}

// recordAt reads record seq; ok is false when it is past the head or no
// longer kept.
func (s *Sender) recordAt(ctx context.Context, seq uint64) (r journal.Record, ok bool, err error) {
	err = s.src.ReadFrom(ctx, seq, func(rec journal.Record) error {
		if rec.Seq == seq {
			r, ok = rec, true
			r.Data = nil // a view, valid only here
		}
		return errStop
	})
	switch {
	case errors.Is(err, errStop):
		return r, ok, nil
	case errors.Is(err, ErrTruncated) || errors.Is(err, journal.ErrReleased):
		return journal.Record{}, false, nil
	}
	return r, ok, err
}

// throughputLocked is the data rate sent over the samples kept.
func (s *Sender) throughputLocked(now time.Time) float64 {
	if len(s.st.samples) == 0 {
		return 0
	}
	first := s.st.samples[0]
	d := now.Sub(first.at).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(s.st.rawBytes-first.bytes) / d
}

// throughputWindow is how far back Throughput looks.
const throughputWindow = 5 * time.Second

// monitor samples throughput and raises and clears the RPO alert.
func (s *Sender) monitor(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			s.st.samples = append(s.st.samples, rateSample{at: now, bytes: s.st.rawBytes})
			for len(s.st.samples) > 1 && now.Sub(s.st.samples[0].at) > throughputWindow {
				s.st.samples = s.st.samples[1:]
			}
			s.mu.Unlock()
			st := s.Status(ctx)
			lagging := st.LagSeconds > s.cfg.RPOAlert.Seconds()
			s.mu.Lock()
			was := s.st.rpoAlert
			s.st.rpoAlert = lagging
			s.mu.Unlock()
			if lagging && !was {
				s.cfg.Logger.Warn("replication: RPO alert: lag over limit", logDisk, s.cfg.Disk,
					"lag_seconds", st.LagSeconds, "limit", s.cfg.RPOAlert, "state", st.State, "connected", st.Connected)
			} else if !lagging && was {
				s.cfg.Logger.Info("replication: RPO alert cleared", logDisk, s.cfg.Disk, "lag_seconds", st.LagSeconds)
			}
		}
	}
}

// WaitAcked returns once the secondary holds record seq durably, for sync
// mode: the daemon journals a write, then calls WaitAcked before it
// acknowledges the write to the NBD client. While a sync runs or the link
// is down the secondary cannot hold it; WaitAcked then waits at most
// SyncTimeout and applies PeerAway: under FallbackAsync it raises the
// SyncDegraded alert and returns nil (and returns nil at once until the
// secondary has caught up); under HoldWrites it returns ErrSyncTimeout. It
// returns ErrClosed once the sender is closed, or ctx's error.
func (s *Sender) WaitAcked(ctx context.Context, seq uint64) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		s.mu.Lock()
		if s.st.sync == nil && s.st.ackHead >= seq {
			s.mu.Unlock()
			return nil
		}
		if s.st.closed {
			s.mu.Unlock()
			return ErrClosed
		}
		if s.st.degraded && s.cfg.PeerAway == FallbackAsync {
			s.mu.Unlock()
			return nil
		}
		ch := s.ackCh
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(s.cfg.SyncTimeout)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			if s.cfg.PeerAway == HoldWrites {
				return ErrSyncTimeout
			}
			s.mu.Lock()
			was := s.st.degraded
			s.st.degraded = true
			connected := s.st.connected
			s.mu.Unlock()
			if !was {
				s.cfg.Logger.Warn("replication: secondary away, sync mode falls back to async", logDisk, s.cfg.Disk,
					logSeq, seq, "waited", s.cfg.SyncTimeout, "connected", connected)
			}
			return nil
		}
	}
}
