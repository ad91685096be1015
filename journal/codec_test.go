package journal_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/journal"
)

func sealed(r journal.Record, prev uint64) journal.Record {
	r.Seal(prev)
	return r
}

func TestRecordRoundTrip(t *testing.T) {
	ts := time.Date(2026, 11, 26, 1, 2, 3, 456789, time.UTC)
	tests := []struct {
		name string
		rec  journal.Record
	}{
		{"write", journal.Record{Seq: 1, Time: ts, Kind: journal.KindWrite, Off: 4096, Len: 5, Data: []byte("hello")}},
		{"zero", journal.Record{Seq: 2, Time: ts, Kind: journal.KindZero, Off: 1 << 40, Len: 1 << 20}},
		{"trim", journal.Record{Seq: 3, Time: ts, Kind: journal.KindTrim, Off: 0, Len: 512}},
		{"marker", journal.Record{Seq: 4, Time: ts, Kind: journal.KindMarker, Data: []byte("checkpoint daily")}},
		{"empty marker, zero time", journal.Record{Seq: 5, Kind: journal.KindMarker}},
		{"empty write", journal.Record{Seq: 6, Time: ts, Kind: journal.KindWrite, Off: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := sealed(tt.rec, 0xfeedface)
			b, err := rec.AppendBinary([]byte("prefix"))
			if err != nil {
				t.Fatalf("AppendBinary: %v", err)
			}
			if got, want := len(b), len("prefix")+rec.EncodedSize(); got != want {
				t.Fatalf("encoded length = %d, want %d", got, want)
			}
			got, n, err := journal.DecodeRecord(append(b[len("prefix"):], "trailing"...))
			if err != nil {
				t.Fatalf("DecodeRecord: %v", err)
			}
			if n != rec.EncodedSize() {
				t.Errorf("consumed %d bytes, want %d", n, rec.EncodedSize())
			}
			if got.Seq != rec.Seq || got.Kind != rec.Kind || got.Off != rec.Off || got.Len != rec.Len ||
				got.PrevSum != rec.PrevSum || got.Sum != rec.Sum || !got.Time.Equal(rec.Time) ||
				!bytes.Equal(got.Data, rec.Data) {
				t.Errorf("decoded %+v, want %+v", got, rec)
			}
			if err := got.Verify(0xfeedface); err != nil {
				t.Errorf("Verify decoded: %v", err)
			}
		})
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	tests := []struct {
		name string
		rec  journal.Record
	}{
		{"unknown kind", journal.Record{Kind: 9}},
		{"zero kind", journal.Record{}},
		{"write len mismatch", journal.Record{Kind: journal.KindWrite, Len: 3, Data: []byte("ab")}},
		{"zero with data", journal.Record{Kind: journal.KindZero, Len: 2, Data: []byte("ab")}},
		{"trim negative off", journal.Record{Kind: journal.KindTrim, Off: -1, Len: 2}},
		{"negative len", journal.Record{Kind: journal.KindZero, Len: -5}},
		{"marker with range", journal.Record{Kind: journal.KindMarker, Off: 5, Len: 1}},
		{"too much data", journal.Record{Kind: journal.KindWrite, Len: journal.MaxData + 1, Data: make([]byte, journal.MaxData+1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.rec.AppendBinary(nil)
			if !errors.Is(err, journal.ErrCorrupt) {
				t.Errorf("AppendBinary error = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	good := sealed(journal.Record{Seq: 7, Kind: journal.KindWrite, Off: 512, Len: 4, Data: []byte("data")}, 1)
	enc, err := good.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte)) []byte {
		b := append([]byte(nil), enc...)
		f(b)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, journal.ErrShort},
		{"short header", enc[:20], journal.ErrShort},
		{"short data", enc[:len(enc)-1], journal.ErrShort},
		{"bad version", mod(func(b []byte) { b[0] = 2 }), journal.ErrCorrupt},
		{"bad kind", mod(func(b []byte) { b[1] = 0 }), journal.ErrCorrupt},
		{"huge length", mod(func(b []byte) { b[50], b[51] = 0xff, 0xff }), journal.ErrCorrupt},
		{"len mismatch", mod(func(b []byte) { b[33] = 9 }), journal.ErrCorrupt},
		{"negative off", mod(func(b []byte) { b[18] = 0x80 }), journal.ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, n, err := journal.DecodeRecord(tt.in)
			if !errors.Is(err, tt.want) {
				t.Errorf("DecodeRecord error = %v, want %v", err, tt.want)
			}
			if n != 0 {
				t.Errorf("consumed %d bytes on error, want 0", n)
			}
		})
	}
}

func TestVerifyDetects(t *testing.T) {
	const prev = 42
	good := sealed(journal.Record{Seq: 9, Time: time.Unix(5, 0), Kind: journal.KindWrite, Off: 0, Len: 3, Data: []byte("abc")}, prev)
	if err := good.Verify(prev); err != nil {
		t.Fatalf("Verify good record: %v", err)
	}
	tests := []struct {
		name string
		mod  func(r *journal.Record)
		prev uint64
	}{
		{"wrong prev", func(r *journal.Record) {}, prev + 1},
		{"flipped data", func(r *journal.Record) { r.Data = []byte("abd") }, prev},
		{"moved seq", func(r *journal.Record) { r.Seq = 10 }, prev},
		{"moved off", func(r *journal.Record) { r.Off = 512 }, prev},
		{"changed time", func(r *journal.Record) { r.Time = time.Unix(6, 0) }, prev},
		{"changed kind", func(r *journal.Record) { r.Kind = journal.KindMarker; r.Len = 0 }, prev},
		{"bad sum", func(r *journal.Record) { r.Sum ^= 1 }, prev},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good
			r.Data = append([]byte(nil), good.Data...)
			tt.mod(&r)
			err := r.Verify(tt.prev)
			if !errors.Is(err, journal.ErrCorrupt) {
				t.Errorf("Verify error = %v, want ErrCorrupt", err)
			}
		})
	}
}

func FuzzDecodeRecord(f *testing.F) {
	for _, r := range []journal.Record{
		{Seq: 1, Kind: journal.KindWrite, Off: 0, Len: 4, Data: []byte("abcd")},
		{Seq: 2, Kind: journal.KindZero, Off: 4096, Len: 4096},
		{Seq: 3, Kind: journal.KindTrim, Off: 8192, Len: 1 << 20},
		{Seq: 4, Kind: journal.KindMarker, Data: []byte("label")},
	} {
		r.Seal(uint64(r.Seq))
		b, err := r.AppendBinary(nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add(make([]byte, journal.HeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := journal.DecodeRecord(b)
		if err != nil {
			if n != 0 {
				t.Fatalf("consumed %d bytes with error %v", n, err)
			}
			return
		}
		if n > len(b) || n != r.EncodedSize() {
			t.Fatalf("consumed %d of %d bytes, record size %d", n, len(b), r.EncodedSize())
		}
		again, err := r.AppendBinary(nil)
		if err != nil {
			t.Fatalf("re-encode decoded record: %v", err)
		}
		if !bytes.Equal(again, b[:n]) {
			// Time 0 and a zero time.Time both encode as 0; everything
			// else must round-trip exactly.
			t.Fatalf("re-encoded %x, want %x", again, b[:n])
		}
		if err := r.Verify(r.PrevSum); (err == nil) != (journal.ChainSum(r.PrevSum, &r) == r.Sum) {
			t.Fatalf("Verify = %v disagrees with ChainSum", err)
		}
	})
}
