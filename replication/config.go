package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Compression names, as the --compress flag takes them.
const (
	CompressZstd = "zstd"
	CompressNone = "none"
)

// PeerAwayPolicy says what WaitAcked does in sync mode when the secondary
// does not acknowledge within SenderConfig.SyncTimeout.
type PeerAwayPolicy int

const (
	// FallbackAsync (the default) stops waiting, raises the SyncDegraded
	// alert and lets writes through unacknowledged by the secondary until
	// it has caught up again.
	FallbackAsync PeerAwayPolicy = iota
	// HoldWrites makes WaitAcked return ErrSyncTimeout after the timeout;
	// every later call waits again.
	HoldWrites
)

// Defaults for zero SenderConfig fields.
const (
	DefaultMaxBatchBytes   = 4 << 20
	DefaultMaxBatchRecords = 8192
	// DefaultMaxInflightFrames keeps the secondary's pipeline full while
	// letting records gather into larger frames while it is busy.
	DefaultMaxInflightFrames = 4
	// SyncModeMaxBatchBytes and SyncModeMaxInflightFrames suit sync mode,
	// where every write waits for its frame's acknowledgement: the same
	// 16 MiB in flight, in frames a quarter the size, which the secondary
	// receives, verifies and appends a frame sooner. Measured with 1 MiB
	// writes at QD16 here: 669 against 625 MB/s (six runs each, in turn).
	SyncModeMaxBatchBytes     = 1 << 20
	SyncModeMaxInflightFrames = 16
	// AsyncBatchDelay is the BatchDelay of async mode. Each frame costs
	// the secondary an append and an fdatasync, and both sides a
	// compression, a TLS record and wake-ups; sent at once, random 4 KiB
	// writes at QD16 went about 11 records to a frame here. Waiting up to
	// 5 ms for more took them to 60-170 records, the secondary's CPU per
	// GB from 6-9.6 s to 4.4-6.4, and the bytes on the wire from 0.9 of
	// the data to under 0.2 (fio's buffers repeat within a larger frame),
	// for 5 ms more lag.
	AsyncBatchDelay    = 5 * time.Millisecond
	DefaultRegionSize  = 4 << 20
	DefaultSyncTimeout = 5 * time.Second
	DefaultRPOAlert    = 30 * time.Second
	DefaultHeartbeat   = time.Second
	DefaultTimeout     = 15 * time.Second
	DefaultMinBackoff  = 100 * time.Millisecond
	DefaultMaxBackoff  = 5 * time.Second
)

// maxBatchBytes caps MaxBatchBytes so that a batch plus one record of
// journal.MaxData fits a frame.
const maxBatchBytes = 8 << 20

// SenderConfig configures a Sender. Zero fields take the Default values.
type SenderConfig struct {
	// Disk is the disk's name, sent in the handshake; the secondary routes
	// the connection by it. Required.
	Disk string
	// Dial opens a connection to the secondary (mutual TLS in the daemon).
	// Required. It is called again, with backoff, after every failure.
	Dial func(ctx context.Context) (net.Conn, error)
	// Source is the disk's journal and store. Required.
	Source Source
	// Logger receives the connection's life (Info) and faults (Warn).
	// Nil discards.
	Logger *slog.Logger

	// Compress is CompressZstd (default) or CompressNone.
	Compress string
	// Bandwidth limits bytes on the wire per second; 0 is unlimited.
	// Under a limit, batches and sync regions shrink to about an eighth
	// of a second's worth.
	Bandwidth int64
	// MaxBatchBytes and MaxBatchRecords bound one records frame; a batch
	// is sent as soon as records are available, so batches grow only
	// while the link is busy.
	MaxBatchBytes   int
	MaxBatchRecords int
	// MaxInflightFrames is how many records frames may be unacknowledged
	// before the sender waits for an acknowledgement (at most a short
	// while) to read the next batch; zero is DefaultMaxInflightFrames.
	// Sync mode wants smaller frames and more of them, so that the
	// secondary starts on a write's records sooner (see
	// SyncModeMaxBatchBytes).
	MaxInflightFrames int
	// BatchDelay, when positive, lets a batch smaller than a quarter of
	// MaxBatchBytes wait up to this long for more records: fewer, larger
	// frames under small writes, at the cost of that much lag (see
	// AsyncBatchDelay). Zero (the default) sends at once, which suits
	// sync mode, where every write waits for its frame.
	BatchDelay time.Duration
	// RegionSize is the unit the initial sync and resync read and send.
	RegionSize int

	// SyncTimeout bounds how long WaitAcked waits for the secondary in
	// sync mode before PeerAway applies.
	SyncTimeout time.Duration
	// PeerAway is the sync mode's policy when the secondary is away.
	PeerAway PeerAwayPolicy
	// RPOAlert raises Status.RPOAlert when the lag passes it.
	RPOAlert time.Duration
	// Retention is how long the secondary keeps records (by their
	// times) for points in time; 0 keeps every record. It is sent to
	// the secondary on every connection (a policy frame, version 2), so
	// a new value takes effect at the next one.
	Retention time.Duration

	// Heartbeat is the keepalive interval on an idle link; Timeout the
	// time without any frame from the secondary (or without progress
	// writing to it) after which the connection is dropped.
	Heartbeat time.Duration
	Timeout   time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnects; it
	// doubles after each failure and resets once records flow.
	MinBackoff time.Duration
	MaxBackoff time.Duration
}

// Validate checks the required fields and fills in defaults.
func (c *SenderConfig) Validate() error {
	if c.Disk == "" {
		return errors.New("replication: sender config: no disk name")
	}
	if c.Dial == nil || c.Source == nil {
		return errors.New("replication: sender config: Dial and Source are required")
	}
	switch c.Compress {
	case "":
		c.Compress = CompressZstd
	case CompressZstd, CompressNone:
	default:
		return fmt.Errorf("replication: sender config: unknown compression %q", c.Compress)
	}
	if c.Bandwidth < 0 {
		return fmt.Errorf("replication: sender config: bandwidth %d", c.Bandwidth)
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.MaxBatchBytes > maxBatchBytes {
		c.MaxBatchBytes = maxBatchBytes
	}
	if c.MaxBatchRecords <= 0 {
		c.MaxBatchRecords = DefaultMaxBatchRecords
	}
	if c.MaxInflightFrames <= 0 {
		c.MaxInflightFrames = DefaultMaxInflightFrames
	}
	if c.RegionSize <= 0 {
		c.RegionSize = DefaultRegionSize
	}
	if c.RegionSize > maxBatchBytes {
		c.RegionSize = maxBatchBytes
	}
	if c.Bandwidth > 0 {
		// Under a limit, frames of about an eighth of a second's worth
		// keep the flow (and the acknowledgements) smooth.
		unit := int(max(c.Bandwidth/8, 64<<10))
		c.MaxBatchBytes = min(c.MaxBatchBytes, unit)
		c.RegionSize = min(c.RegionSize, unit)
	}
	c.RegionSize = (c.RegionSize + zeroBlock - 1) / zeroBlock * zeroBlock
	setDefault(&c.SyncTimeout, DefaultSyncTimeout)
	setDefault(&c.RPOAlert, DefaultRPOAlert)
	setDefault(&c.Heartbeat, DefaultHeartbeat)
	setDefault(&c.Timeout, DefaultTimeout)
	setDefault(&c.MinBackoff, DefaultMinBackoff)
	setDefault(&c.MaxBackoff, DefaultMaxBackoff)
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// Log keys.
const (
	logDisk   = "disk"
	logSite   = "site"
	logSeq    = "seq"
	logErr    = "err"
	logRemote = "remote"
	logSync   = "sync"
)
