package replica

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tandem-dr/tandem/replication"
)

// ErrBadState is returned when a replica's persisted state or staged
// region list does not decode.
var ErrBadState = errors.New("replica: persisted state corrupt")

// stateVersion is the version byte of the encoded state.
const stateVersion = 1

// State flags.
const (
	flagInitialized = 1 << iota
	flagSyncing
	flagFull
	flagEnded
	flagCommitting
	flagRebased
	flagsKnown = 1<<iota - 1
)

// stateSize is the encoded size: version, flags, applied, then the sync's
// ID, Base, Total, CopiedThrough and End.
const stateSize = 2 + 8 + 8 + 16 + 8 + 8 + 16

// diskState is a replica's persisted state.
type diskState struct {
	// Initialized is true once an initial sync has committed.
	Initialized bool
	// Applied is the seq through which the store durably holds the
	// replica. Outside a sync, records after it are replayed at Open;
	// during a sync it is the consistent point.
	Applied uint64
	// Sync is the sync in progress, or nil.
	Sync *replication.SyncInfo
	// Rebased is true once BeginSync has rebased the journal on the
	// sync's Base.
	Rebased bool
	// Committing is the commit intent: CommitSync began and Open must
	// finish it.
	Committing bool
}

// encode returns the persisted form of st.
func (st diskState) encode() []byte {
	b := make([]byte, 0, stateSize)
	var flags byte
	if st.Initialized {
		flags |= flagInitialized
	}
	var s replication.SyncInfo
	if st.Sync != nil {
		s = *st.Sync
		flags |= flagSyncing
		if s.Full {
			flags |= flagFull
		}
		if s.Ended {
			flags |= flagEnded
		}
		if st.Committing {
			flags |= flagCommitting
		}
		if st.Rebased {
			flags |= flagRebased
		}
	}
	b = append(b, stateVersion, flags)
	b = binary.BigEndian.AppendUint64(b, st.Applied)
	b = binary.BigEndian.AppendUint64(b, s.ID)
	b = binary.BigEndian.AppendUint64(b, s.Base.Seq)
	b = binary.BigEndian.AppendUint64(b, s.Base.Sum)
	b = binary.BigEndian.AppendUint64(b, uint64(s.Total))
	b = binary.BigEndian.AppendUint64(b, uint64(s.CopiedThrough))
	b = binary.BigEndian.AppendUint64(b, s.End.Seq)
	b = binary.BigEndian.AppendUint64(b, s.End.Sum)
	return b
}

// decodeState parses a persisted state for a disk of size bytes.
func decodeState(b []byte, size int64) (diskState, error) {
	if len(b) != stateSize {
		return diskState{}, fmt.Errorf("%w: %d bytes, want %d", ErrBadState, len(b), stateSize)
	}
	if b[0] != stateVersion {
		return diskState{}, fmt.Errorf("%w: version %d", ErrBadState, b[0])
	}
	flags := b[1]
	if flags&^flagsKnown != 0 {
		return diskState{}, fmt.Errorf("%w: unknown flags %#x", ErrBadState, flags)
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(b[2+8*i:]) }
	st := diskState{Initialized: flags&flagInitialized != 0, Applied: u(0)}
	if flags&flagSyncing == 0 {
		if flags&^flagInitialized != 0 {
			return diskState{}, fmt.Errorf("%w: sync flags %#x without a sync", ErrBadState, flags)
		}
		return st, nil
	}
	s := &replication.SyncInfo{
		ID:            u(1),
		Full:          flags&flagFull != 0,
		Base:          replication.Position{Seq: u(2), Sum: u(3)},
		Total:         int64(u(4)),
		CopiedThrough: int64(u(5)),
		Ended:         flags&flagEnded != 0,
		End:           replication.Position{Seq: u(6), Sum: u(7)},
	}
	switch {
	case s.Total < 0:
		return diskState{}, fmt.Errorf("%w: sync total %d", ErrBadState, s.Total)
	case s.CopiedThrough < 0 || s.CopiedThrough > size:
		return diskState{}, fmt.Errorf("%w: sync copied through %d of %d bytes", ErrBadState, s.CopiedThrough, size)
	case s.Ended && s.End.Seq < s.Base.Seq:
		return diskState{}, fmt.Errorf("%w: sync end seq=%d before base seq=%d", ErrBadState, s.End.Seq, s.Base.Seq)
	case !s.Ended && (s.End != replication.Position{}):
		return diskState{}, fmt.Errorf("%w: sync end without the ended flag", ErrBadState)
	case flags&flagCommitting != 0 && (!s.Ended || flags&flagRebased == 0):
		return diskState{}, fmt.Errorf("%w: commit intent for a sync not ready", ErrBadState)
	}
	st.Sync = s
	st.Committing = flags&flagCommitting != 0
	st.Rebased = flags&flagRebased != 0
	return st, nil
}

// regionSize is the encoded size of one staged region.
const regionSize = 16

// encodeRegions returns the persisted form of staged regions.
func encodeRegions(rs []replication.Region) []byte {
	b := make([]byte, 0, len(rs)*regionSize)
	for _, r := range rs {
		b = binary.BigEndian.AppendUint64(b, uint64(r.Off))
		b = binary.BigEndian.AppendUint64(b, uint64(r.Len))
	}
	return b
}

// decodeRegions parses staged regions of a disk of size bytes: in order,
// not overlapping, inside the disk.
func decodeRegions(b []byte, size int64) ([]replication.Region, error) {
	if len(b)%regionSize != 0 {
		return nil, fmt.Errorf("%w: staged regions of %d bytes", ErrBadState, len(b))
	}
	rs := make([]replication.Region, 0, len(b)/regionSize)
	var end int64
	for i := 0; i < len(b); i += regionSize {
		r := replication.Region{Off: int64(binary.BigEndian.Uint64(b[i:])), Len: int64(binary.BigEndian.Uint64(b[i+8:]))}
		if r.Off < end || r.Len <= 0 || r.Off > size || r.Len > size-r.Off {
			return nil, fmt.Errorf("%w: staged region off=%d len=%d after %d on a %d-byte disk", ErrBadState, r.Off, r.Len, end, size)
		}
		rs = append(rs, r)
		end = r.End()
	}
	return rs, nil
}
