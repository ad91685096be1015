package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/tandem-dr/tandem/replica"
	"github.com/tandem-dr/tandem/replication"
)

// ErrWrongRole is returned for an operation the disk's role forbids here.
var ErrWrongRole = errors.New("appliance: wrong role")

// ProtectOptions are the arguments of `tandem protect`.
type ProtectOptions struct {
	Peer   string `json:"peer"`
	Policy Policy `json:"policy"`
}

// Protect starts replicating a primary disk to a paired site: the journal
// keeps every record from now on until the secondary acknowledges it, the
// secondary creates the replica on first contact, an initial sync copies
// the allocated regions while writes go on, and records stream after it.
//
// It waits up to protectAnswerWait for the secondary's first answer, so
// that the state it returns says what is going on (initial-sync, or paused
// with the reason the secondary is away), not only that shipping began.
func (d *Daemon) Protect(ctx context.Context, name string, o ProtectOptions) (DiskInfo, error) {
	s, err := d.protect(ctx, name, o)
	if err != nil {
		return DiskInfo{}, err
	}
	if s != nil {
		t := time.NewTimer(protectAnswerWait)
		defer t.Stop()
		select {
		case <-s.Answered():
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return d.Disk(ctx, name)
}

// protectAnswerWait bounds Protect's wait for the secondary's first
// answer: a dial and a TLS handshake on a working link take milliseconds.
const protectAnswerWait = 2 * time.Second

// protect marks the disk protected and starts its sender, which it
// returns (nil when the disk was protected to o.Peer already).
func (d *Daemon) protect(ctx context.Context, name string, o ProtectOptions) (*replication.Sender, error) {
	if err := o.Policy.Validate(); err != nil {
		return nil, err
	}
	if _, err := d.id.Peers().Get(o.Peer); err != nil {
		return nil, fmt.Errorf("%w: %s (pair first: tandem pair token on it, tandem pair add here)", ErrNotPaired, o.Peer)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	od, ok := d.disks[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrDiskNotFound, name)
	}
	if od.tap == nil {
		return nil, fmt.Errorf("%w: %s is a %s here; protect it at its primary", ErrWrongRole, name, od.meta.Role)
	}
	if od.meta.Protected {
		if od.meta.Peer == o.Peer {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: %s is protected to %s already (unprotect it first)", ErrBadRequest, name, od.meta.Peer)
	}
	if err := replica.Protect(ctx, od.log); err != nil {
		return nil, err
	}
	m := od.meta
	m.Protected, m.Peer, m.Policy = true, o.Peer, o.Policy
	if err := writeJSONFile(d.metaPath(name), m); err != nil {
		return nil, fmt.Errorf("save disk %s: %w", name, err)
	}
	od.meta = m
	if err := d.startSender(ctx, od); err != nil {
		return nil, err
	}
	d.log.Info("protected", "disk", name, "peer", o.Peer, "mode", m.Policy.withDefaults().Mode)
	return od.sender, nil
}

// Unprotect stops replicating a disk. The secondary keeps its replica.
func (d *Daemon) Unprotect(ctx context.Context, name string) (DiskInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	od, ok := d.disks[name]
	if !ok {
		return DiskInfo{}, fmt.Errorf("%w: %s", ErrDiskNotFound, name)
	}
	if !od.meta.Protected {
		return od.info(ctx), nil
	}
	if od.sender != nil {
		od.tap.SetAcker(nil)
		if err := od.sender.Close(ctx); err != nil {
			d.log.Warn("stop replication", "disk", name, "err", err)
		}
		od.sender = nil
	}
	if err := replica.Unprotect(ctx, od.tap, od.log); err != nil {
		return DiskInfo{}, err
	}
	m := od.meta
	m.Protected = false
	if err := writeJSONFile(d.metaPath(name), m); err != nil {
		return DiskInfo{}, fmt.Errorf("save disk %s: %w", name, err)
	}
	od.meta = m
	d.log.Info("unprotected", "disk", name)
	return od.info(ctx), nil
}

// startSender starts shipping a protected disk's journal to its peer.
func (d *Daemon) startSender(ctx context.Context, od *openDisk) error {
	if err := replica.Protect(ctx, od.log); err != nil {
		return err
	}
	log := d.log.With("disk", od.meta.Name, "peer", od.meta.Peer)
	src, err := replica.NewSource(od.tap, od.log, replica.SourceOptions{Logger: log})
	if err != nil {
		return err
	}
	p := od.meta.Policy.withDefaults()
	peer := od.meta.Peer
	away := replication.FallbackAsync
	if p.PeerAway == PeerAwayHold {
		away = replication.HoldWrites
	}
	var batch, window int // the defaults
	delay := replication.AsyncBatchDelay
	if p.Mode == ModeSync {
		batch, window, delay = replication.SyncModeMaxBatchBytes, replication.SyncModeMaxInflightFrames, 0
	}
	s, err := replication.NewSender(replication.SenderConfig{
		Disk: od.meta.Name,
		Dial: func(ctx context.Context) (net.Conn, error) {
			return d.id.DialPeer(ctx, peer, "")
		},
		Source:      src,
		Logger:      log,
		Compress:    p.Compress,
		Bandwidth:   p.Bandwidth,
		RPOAlert:    time.Duration(p.RPOAlert),
		Retention:   time.Duration(p.Retention),
		PeerAway:    away,
		SyncTimeout: time.Duration(p.SyncTimeout),

		MaxBatchBytes:     batch,
		MaxInflightFrames: window,
		BatchDelay:        delay,
	})
	if err != nil {
		return fmt.Errorf("replication of %s: %w", od.meta.Name, err)
	}
	if err := s.Open(); err != nil {
		return fmt.Errorf("start replication of %s: %w", od.meta.Name, err)
	}
	od.sender = s
	if p.Mode == ModeSync {
		od.tap.SetAcker(s)
	}
	return nil
}

// Verify compares a protected disk with its replica region by region
// while writes go on (only digests travel) and has the secondary check its
// journal's hash chain.
func (d *Daemon) Verify(ctx context.Context, name string) (replication.VerifyReport, error) {
	od, ok := d.lookup(name)
	if !ok {
		return replication.VerifyReport{}, fmt.Errorf("%w: %s", ErrDiskNotFound, name)
	}
	d.mu.Lock()
	s := od.sender
	d.mu.Unlock()
	if s == nil {
		return replication.VerifyReport{}, fmt.Errorf("%w: %s is not a protected primary here", ErrWrongRole, name)
	}
	return s.Verify(ctx, replication.VerifyOptions{})
}
