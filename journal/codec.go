package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"
)

// The binary form of a Record, used both in badger and on the replication
// wire. All integers are big-endian and fixed width, so a record's size is
// known from its header alone:
//
//	off size field
//	  0    1 format version (1)
//	  1    1 kind
//	  2    8 seq
//	 10    8 time, Unix nanoseconds (int64)
//	 18    8 off (int64)
//	 26    8 len (int64)
//	 34    8 prev sum
//	 42    8 sum
//	 50    4 data length (uint32)
//	 54    n data
const (
	recordVersion = 1
	// HeaderSize is the size of an encoded record without its data.
	HeaderSize = 54
	// MaxData is the largest Data a record may carry. Writes larger than
	// this are journaled as several records.
	MaxData = 1 << 20
)

var (
	// ErrCorrupt reports a record whose checksum, chain link or structure
	// is wrong. A corrupt record is never returned as data.
	ErrCorrupt = errors.New("journal: record corrupt")
	// ErrShort reports that a buffer ends before the record it starts.
	ErrShort = errors.New("journal: record truncated")
)

// EncodedSize is the number of bytes AppendBinary adds for r.
func (r *Record) EncodedSize() int { return HeaderSize + len(r.Data) }

// Validate checks the record's structure: a known kind, a non-negative
// range, Len equal to len(Data) for writes, no data on zero and trim and
// no range on markers. It does not check sums; see Verify.
func (r *Record) Validate() error {
	if len(r.Data) > MaxData {
		return fmt.Errorf("%w: seq=%d data length %d over %d", ErrCorrupt, r.Seq, len(r.Data), MaxData)
	}
	if r.Off < 0 || r.Len < 0 || r.Off > (1<<62) || r.Len > (1<<62) {
		return fmt.Errorf("%w: seq=%d bad range off=%d len=%d", ErrCorrupt, r.Seq, r.Off, r.Len)
	}
	switch r.Kind {
	case KindWrite:
		if r.Len != int64(len(r.Data)) {
			return fmt.Errorf("%w: seq=%d write len=%d but %d data bytes", ErrCorrupt, r.Seq, r.Len, len(r.Data))
		}
	case KindZero, KindTrim:
		if len(r.Data) != 0 {
			return fmt.Errorf("%w: seq=%d kind %d carries data", ErrCorrupt, r.Seq, r.Kind)
		}
	case KindMarker:
		if r.Off != 0 || r.Len != 0 {
			return fmt.Errorf("%w: seq=%d marker with a range", ErrCorrupt, r.Seq)
		}
	default:
		return fmt.Errorf("%w: seq=%d unknown kind %d", ErrCorrupt, r.Seq, r.Kind)
	}
	return nil
}

// AppendBinary appends the binary form of r to b. It fails only when the
// record is structurally invalid (see Validate); it does not compute sums.
func (r *Record) AppendBinary(b []byte) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return b, err
	}
	var h [HeaderSize]byte
	r.putHeader(h[:])
	binary.BigEndian.PutUint64(h[42:], r.Sum)
	b = append(b, h[:]...)
	return append(b, r.Data...), nil
}

// putHeader fills the header of r into h, leaving the sum field zero.
func (r *Record) putHeader(h []byte) {
	h[0] = recordVersion
	h[1] = byte(r.Kind)
	binary.BigEndian.PutUint64(h[2:], r.Seq)
	binary.BigEndian.PutUint64(h[10:], uint64(unixNano(r.Time)))
	binary.BigEndian.PutUint64(h[18:], uint64(r.Off))
	binary.BigEndian.PutUint64(h[26:], uint64(r.Len))
	binary.BigEndian.PutUint64(h[34:], r.PrevSum)
	binary.BigEndian.PutUint64(h[42:], 0)
	binary.BigEndian.PutUint32(h[50:], uint32(len(r.Data)))
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// DecodeRecord decodes the record at the start of b and returns it with
// the number of bytes it used. The returned Data is a copy: b may be reused.
// It checks the structure (see Validate), not the sums (see Verify). It
// never panics: garbage yields an error wrapping ErrCorrupt, or ErrShort
// when b ends before the record does.
func DecodeRecord(b []byte) (Record, int, error) {
	r, n, err := decodeView(b)
	if err == nil && len(r.Data) > 0 {
		r.Data = append([]byte(nil), r.Data...)
	}
	return r, n, err
}

// DecodeRecordView is DecodeRecord without the copy: the returned Data
// aliases b, so b must not change while the record is in use.
func DecodeRecordView(b []byte) (Record, int, error) { return decodeView(b) }

// decodeView is DecodeRecord without the copy: the returned Data aliases b.
func decodeView(b []byte) (Record, int, error) {
	if len(b) < HeaderSize {
		return Record{}, 0, fmt.Errorf("%w: %d of %d header bytes", ErrShort, len(b), HeaderSize)
	}
	if b[0] != recordVersion {
		return Record{}, 0, fmt.Errorf("%w: format version %d", ErrCorrupt, b[0])
	}
	n := binary.BigEndian.Uint32(b[50:])
	if n > MaxData {
		return Record{}, 0, fmt.Errorf("%w: data length %d over %d", ErrCorrupt, n, MaxData)
	}
	total := HeaderSize + int(n)
	if len(b) < total {
		return Record{}, 0, fmt.Errorf("%w: %d of %d bytes", ErrShort, len(b), total)
	}
	r := Record{
		Kind:    Kind(b[1]),
		Seq:     binary.BigEndian.Uint64(b[2:]),
		Off:     int64(binary.BigEndian.Uint64(b[18:])),
		Len:     int64(binary.BigEndian.Uint64(b[26:])),
		PrevSum: binary.BigEndian.Uint64(b[34:]),
		Sum:     binary.BigEndian.Uint64(b[42:]),
	}
	if ns := int64(binary.BigEndian.Uint64(b[10:])); ns != 0 {
		r.Time = time.Unix(0, ns).UTC()
	}
	if n > 0 {
		r.Data = b[HeaderSize:total:total]
	}
	if err := r.Validate(); err != nil {
		return Record{}, 0, err
	}
	return r, total, nil
}

// ChainSum is the chained checksum of r following a record whose Sum is
// prev: xxhash64 over prev, the header fields (version, kind, seq, time,
// off, len, data length) and Data. r.PrevSum and r.Sum are not read, so a
// record moved to another place in the chain gets a different sum.
func ChainSum(prev uint64, r *Record) uint64 {
	var h [HeaderSize]byte
	r.putHeader(h[:])
	binary.BigEndian.PutUint64(h[34:], prev)
	d := xxhash.New()
	_, _ = d.Write(h[:])
	_, _ = d.Write(r.Data)
	return d.Sum64()
}

// Seal sets r.PrevSum to prev and r.Sum to ChainSum(prev, r).
func (r *Record) Seal(prev uint64) {
	r.PrevSum = prev
	r.Sum = ChainSum(prev, r)
}

// Verify checks that r is well formed, follows a record whose Sum is prev
// and carries the right checksum. Its errors wrap ErrCorrupt and name the
// seq.
func (r *Record) Verify(prev uint64) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if r.PrevSum != prev {
		return fmt.Errorf("%w: seq=%d chain broken: prev sum %016x, want %016x", ErrCorrupt, r.Seq, r.PrevSum, prev)
	}
	if got := ChainSum(prev, r); got != r.Sum {
		return fmt.Errorf("%w: seq=%d checksum %016x, want %016x", ErrCorrupt, r.Seq, got, r.Sum)
	}
	return nil
}
