package replica

import "github.com/tandem-dr/tandem/replication"

// Fault points of CommitSync for tests.
const (
	FaultIntent  = faultIntent
	FaultCopied  = faultCopied
	FaultApplied = faultApplied
)

// SetFault makes CommitSync call fn at each fault point; an error stops
// the commit there, as a crash would.
func SetFault(d *Disk, fn func(point string) error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fault = fn
}

// SetCheckpointHook makes each background checkpoint call fn before it
// syncs the store.
func SetCheckpointHook(d *Disk, fn func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cpHook = fn
}

// PersistedApplied is the last record the persisted state says the store
// holds durably, once no background checkpoint is running.
func PersistedApplied(d *Disk) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitCheckpoint()
	return d.st.Applied
}

// Crash closes the disk's files without a checkpoint or any other write,
// as a killed process leaves them (a background checkpoint finishes
// first: it holds the store's file).
func Crash(d *Disk) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitCheckpoint()
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
