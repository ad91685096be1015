package replica

import "github.com/tandem-dr/tandem/replication"

// Fault points of CommitSync and Apply for tests.
const (
	FaultIntent      = faultIntent
	FaultCopied      = faultCopied
	FaultApplied     = faultApplied
	FaultApplyRecord = faultApplyRecord
)

// SetFault makes CommitSync and Apply call fn at each fault point; an
// error stops the commit there, as a crash would, and fails Apply's
// write, as a failing store would.
func SetFault(d *Disk, fn func(point string) error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fault = fn
}

// Crash closes the disk's files without a checkpoint or any other write,
// as a killed process leaves them.
func Crash(d *Disk) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	_ = d.closeFiles()
}

// DecodeState parses a persisted state and encodes it again.
func DecodeState(b []byte, size int64) ([]byte, error) {
	st, err := decodeState(b, size)
	if err != nil {
		return nil, err
	}
	return st.encode(), nil
}

// EncodeState encodes a state for seeds.
func EncodeState(initialized bool, applied uint64, s *replication.SyncInfo, rebased, committing bool) []byte {
	return diskState{Initialized: initialized, Applied: applied, Sync: s, Rebased: rebased, Committing: committing}.encode()
}

// DecodeRegions and EncodeRegions expose the staged region list codec.
func DecodeRegions(b []byte, size int64) ([]replication.Region, error) { return decodeRegions(b, size) }

// EncodeRegions encodes staged regions.
func EncodeRegions(rs []replication.Region) []byte { return encodeRegions(rs) }

// Applied returns the last record the store holds (outside a sync).
func Applied(d *Disk) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applied
}

// Broken returns the failure that broke the Disk (wrapping ErrBroken),
// nil while it is sound, ErrClosed once closed.
func Broken(d *Disk) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.usable()
}
