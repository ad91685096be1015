package appliance

import (
	"testing"
	"time"
)

// TestRetentionCutoff: the cutoff is on the primary's clock, so a
// primary ten minutes ahead expires records ten minutes later by its own
// stamps; no retention keeps everything.
func TestRetentionCutoff(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	m := DiskMeta{Policy: Policy{Retention: Duration(time.Hour)}}
	if got, ok := retentionCutoff(now, m); !ok || !got.Equal(now.Add(-time.Hour)) {
		t.Errorf("same clocks: cutoff %v, %v; want %v", got, ok, now.Add(-time.Hour))
	}
	m.PeerClock = Duration(10 * time.Minute)
	if got, ok := retentionCutoff(now, m); !ok || !got.Equal(now.Add(-50*time.Minute)) {
		t.Errorf("primary 10m ahead: cutoff %v, %v; want %v", got, ok, now.Add(-50*time.Minute))
	}
	if _, ok := retentionCutoff(now, DiskMeta{}); ok {
		t.Errorf("no retention: a cutoff; want every record kept")
	}
}
