package journal

import "time"

// Kind says what a record does to its disk.
type Kind uint8

// The record kinds. Write carries Data; Zero and Trim carry only a range;
// Marker carries no range and names a point (a checkpoint label, a group
// cut, a resync boundary) in Data.
const (
	KindWrite  Kind = 1
	KindZero   Kind = 2
	KindTrim   Kind = 3
	KindMarker Kind = 4
)

// Record is one entry of a disk's journal.
//
// Seq numbers are dense per disk: 1, 2, 3, … with no gaps. Every boundary
// between two records is a crash-consistent recovery point. Sum chains the
// record to the one before it: Sum = checksum(PrevSum, header, Data), so a
// damaged, missing or reordered record is detected, not only a flipped bit.
type Record struct {
	Seq  uint64
	Time time.Time // when the primary accepted the write (UTC, nanoseconds)
	Kind Kind
	Off  int64  // byte offset on the disk (Write, Zero, Trim)
	Len  int64  // byte length; for Write, len(Data)
	Data []byte // payload of Write; label of Marker

	PrevSum uint64 // Sum of record Seq-1 (0 for the first record of a chain)
	Sum     uint64 // chained checksum of this record
}
