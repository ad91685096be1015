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
		out = append(out, DiskStatus{
			Name:         di.Name,
			Role:         di.Role,
			State:        di.State,
			NewestPoint:  di.JournalHead,
			OldestPoint:  oldest,
			ReadBps:      r,
			WriteBps:     w,
			JournalBytes: di.JournalBytes,
		})
	}
	return out, nil
}

// String formats a status line for people.
func (s DiskStatus) String() string {
	return fmt.Sprintf("%-16s %-8s %-14s lag %6.1fs %10dB  points %d..%d  write %s/s",
		s.Name, s.Role, s.State, s.LagSeconds, s.LagBytes, s.OldestPoint, s.NewestPoint, FormatRate(s.WriteBps))
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
