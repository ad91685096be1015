package appliance

import (
	"context"
	"fmt"
	"time"
)

// DiskStatus is one line of `tandem status`.
type DiskStatus struct {
	Name  string `json:"name"`
	Role  string `json:"role"`
	State string `json:"state"`
	// SyncPercent is the initial-sync progress while State is initial-sync.
	SyncPercent float64 `json:"sync_percent,omitempty"`
	Peer        string  `json:"peer,omitempty"`
	// LagSeconds and LagBytes: how far the replica is behind.
	LagSeconds float64 `json:"lag_seconds"`
	LagBytes   int64   `json:"lag_bytes"`
	// RPOAlert is set when the lag passes the disk's --rpo-alert.
	RPOAlert bool `json:"rpo_alert"`
	// NewestPoint and OldestPoint are the recovery window in sequence numbers.
	NewestPoint uint64 `json:"newest_point"`
	OldestPoint uint64 `json:"oldest_point"`
	// ReadBps and WriteBps are the disk's recent throughput.
	ReadBps  float64 `json:"read_bps"`
	WriteBps float64 `json:"write_bps"`
	// JournalBytes is the journal's unreleased size.
	JournalBytes int64 `json:"journal_bytes"`
	// Replication, on a protected primary: the link, the bytes shipped
	// (RawBytes of data, WireBytes after compression), the throughput of
	// shipping, the newest record the secondary holds, and the last error.
	Connected     bool    `json:"connected"`
	ShipBps       float64 `json:"ship_bps"`
	RawBytes      uint64  `json:"raw_bytes"`
	WireBytes     uint64  `json:"wire_bytes"`
	AckedPoint    uint64  `json:"acked_point"`
	SyncDegraded  bool    `json:"sync_degraded,omitempty"`
	LastError     string  `json:"last_error,omitempty"`
	ConsistentSeq uint64  `json:"consistent_point,omitempty"`
	// Checkpoint is the newest tagged point: on a primary, the newest
	// checkpoint cut since the daemon started; on a replica, the newest
	// one its store holds of those received since then.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
}

// Status reports every disk, or only the one named.
func (d *Daemon) Status(ctx context.Context, name string) ([]DiskStatus, error) {
	var infos []DiskInfo
	if name != "" {
		di, err := d.Disk(ctx, name)
		if err != nil {
			return nil, err
		}
		infos = []DiskInfo{di}
	} else {
		infos = d.Disks(ctx)
	}
	now := time.Now()
	out := make([]DiskStatus, 0, len(infos))
	for _, di := range infos {
		od, ok := d.lookup(di.Name)
		if !ok {
			continue
		}
		r, w := od.meter.rates(now)
		oldest, _ := od.log.Base()
		st := DiskStatus{
			Name:         di.Name,
			Role:         di.Role,
			State:        di.State,
			Peer:         di.Peer,
			NewestPoint:  di.JournalHead,
			OldestPoint:  oldest,
			ReadBps:      r,
			WriteBps:     w,
			JournalBytes: di.JournalBytes,
		}
		d.mu.Lock()
		sender := od.sender
		if od.checkpoint != nil {
			cp := *od.checkpoint
			st.Checkpoint = &cp
		}
		d.mu.Unlock()
		if sender != nil {
			rs := sender.Status(ctx)
			st.State = rs.State
			st.SyncPercent = rs.SyncPercent
			st.LagSeconds = rs.LagSeconds
			st.LagBytes = int64(rs.LagBytes)
			st.RPOAlert = rs.RPOAlert
			st.Connected = rs.Connected
			st.ShipBps = rs.Throughput
			st.RawBytes, st.WireBytes = rs.RawBytes, rs.WireBytes
			st.AckedPoint = rs.AckedSeq
			st.ConsistentSeq = rs.ConsistentSeq
			st.SyncDegraded = rs.SyncDegraded
			st.LastError = rs.LastError
		}
		if od.replica != nil {
			rst, err := od.replica.State(ctx)
			if err == nil {
				st.ConsistentSeq = rst.Consistent
				st.NewestPoint = rst.Consistent
				if m, ok := od.replica.NewestMarker(); ok {
					st.Checkpoint = &Checkpoint{Seq: m.Seq, Time: m.Time, Label: m.Label}
				}
			} else {
				// A broken replica says why (it recovers when its
				// primary next connects).
				st.LastError = err.Error()
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// String formats a status line for people.
func (s DiskStatus) String() string {
	state := s.State
	if s.State == "initial-sync" || (s.State == "resync" && s.SyncPercent > 0) {
		state = fmt.Sprintf("%s %.0f%%", s.State, s.SyncPercent)
	}
	line := fmt.Sprintf("%-12s %-8s %-18s lag %6.1fs %9s  points %d..%d  write %s/s",
		s.Name, s.Role, state, s.LagSeconds, FormatRate(float64(s.LagBytes)), s.OldestPoint, s.NewestPoint, FormatRate(s.WriteBps))
	if s.Peer != "" {
		line += "  peer " + s.Peer
	}
	if s.Role == RolePrimary && s.Peer != "" {
		line += fmt.Sprintf("  ship %s/s", FormatRate(s.ShipBps))
		if s.RawBytes > 0 {
			line += fmt.Sprintf(" (wire %.0f%% of data)", 100*float64(s.WireBytes)/float64(s.RawBytes))
		}
	}
	if s.Checkpoint != nil {
		line += fmt.Sprintf("  checkpoint %d %q", s.Checkpoint.Seq, s.Checkpoint.Label)
	}
	if s.RPOAlert {
		line += "  RPO ALERT"
	}
	if s.SyncDegraded {
		line += "  SYNC DEGRADED"
	}
	if s.LastError != "" {
		line += "  (" + s.LastError + ")"
	}
	return line
}

// FormatRate prints a byte rate with a binary unit.
func FormatRate(bps float64) string {
	units := []string{"B", "KiB", "MiB", "GiB"}
	i := 0
	for bps >= 1024 && i < len(units)-1 {
		bps /= 1024
		i++
	}
	return fmt.Sprintf("%.1f%s", bps, units[i])
}
