package replica_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tandem-dr/tandem/replica"
	"github.com/tandem-dr/tandem/replication"
)

func TestStateCodec(t *testing.T) {
	sync := &replication.SyncInfo{ID: 7, Full: true, Base: replication.Position{Seq: 10, Sum: 3}, Total: 4096, CopiedThrough: 2048}
	ended := &replication.SyncInfo{ID: 8, Base: replication.Position{Seq: 10, Sum: 3}, Ended: true, End: replication.Position{Seq: 12, Sum: 9}}
	good := []struct {
		name string
		b    []byte
	}{
		{"new", replica.EncodeState(false, 0, nil, false, false)},
		{"streaming", replica.EncodeState(true, 99, nil, false, false)},
		{"syncing", replica.EncodeState(false, 0, sync, true, false)},
		{"committing", replica.EncodeState(true, 5, ended, true, true)},
	}
	for _, tc := range good {
		got, err := replica.DecodeState(tc.b, 1<<20)
		if err != nil {
			t.Errorf("%s: DecodeState = %v, want nil", tc.name, err)
			continue
		}
		if !bytes.Equal(got, tc.b) {
			t.Errorf("%s: encode(decode(b)) = %x, want %x", tc.name, got, tc.b)
		}
	}
	bad := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", replica.EncodeState(true, 1, nil, false, false)[:10]},
		{"version", append([]byte{9}, replica.EncodeState(true, 1, nil, false, false)[1:]...)},
		{"copied past the disk", replica.EncodeState(false, 0, &replication.SyncInfo{CopiedThrough: 2 << 20}, true, false)},
		{"commit before the end", replica.EncodeState(false, 0, sync, true, true)},
		{"end before base", replica.EncodeState(false, 0, &replication.SyncInfo{Base: replication.Position{Seq: 5}, Ended: true, End: replication.Position{Seq: 4}}, true, false)},
	}
	for _, tc := range bad {
		if _, err := replica.DecodeState(tc.b, 1<<20); !errors.Is(err, replica.ErrBadState) {
			t.Errorf("%s: DecodeState = %v, want ErrBadState", tc.name, err)
		}
	}
}

func TestRegionsCodec(t *testing.T) {
	rs := []replication.Region{{Off: 0, Len: 4096}, {Off: 4096, Len: 100}, {Off: 1 << 19, Len: 1 << 19}}
	got, err := replica.DecodeRegions(replica.EncodeRegions(rs), 1<<20)
	if err != nil || len(got) != len(rs) {
		t.Fatalf("DecodeRegions(EncodeRegions(%v)) = %v, %v", rs, got, err)
	}
	for i := range rs {
		if got[i] != rs[i] {
			t.Errorf("region %d = %+v, want %+v", i, got[i], rs[i])
		}
	}
	for _, bad := range [][]replication.Region{
		{{Off: 4096, Len: 10}, {Off: 0, Len: 10}},  // out of order
		{{Off: 0, Len: 4096}, {Off: 100, Len: 10}}, // overlapping
		{{Off: 1 << 20, Len: 1}},                   // past the end
		{{Off: 0, Len: 0}},                         // empty
		{{Off: -1, Len: 10}},                       // negative
		{{Off: 1 << 19, Len: 1<<62 + 1<<19}},       // overflowing
	} {
		if _, err := replica.DecodeRegions(replica.EncodeRegions(bad), 1<<20); !errors.Is(err, replica.ErrBadState) {
			t.Errorf("DecodeRegions(%v) = %v, want ErrBadState", bad, err)
		}
	}
	if _, err := replica.DecodeRegions([]byte{1, 2, 3}, 1<<20); !errors.Is(err, replica.ErrBadState) {
		t.Errorf("DecodeRegions of 3 bytes = %v, want ErrBadState", err)
	}
}

func FuzzDecodeState(f *testing.F) {
	f.Add(replica.EncodeState(false, 0, nil, false, false))
	f.Add(replica.EncodeState(true, 42, nil, false, false))
	f.Add(replica.EncodeState(true, 3, &replication.SyncInfo{ID: 1, Base: replication.Position{Seq: 3, Sum: 1}, Total: 10, CopiedThrough: 5}, true, false))
	f.Add(replica.EncodeState(true, 3, &replication.SyncInfo{ID: 1, Full: true, Ended: true, End: replication.Position{Seq: 9}}, true, true))
	f.Add([]byte{1, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := replica.DecodeState(b, 1<<30)
		if err != nil {
			if !errors.Is(err, replica.ErrBadState) {
				t.Fatalf("DecodeState error %v does not wrap ErrBadState", err)
			}
			return
		}
		again, err := replica.DecodeState(got, 1<<30)
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("re-decoding an encoded state = %x, %v; want %x, nil", again, err, got)
		}
	})
}

func FuzzDecodeRegions(f *testing.F) {
	f.Add(replica.EncodeRegions([]replication.Region{{Off: 0, Len: 4096}, {Off: 8192, Len: 1}}))
	f.Add(replica.EncodeRegions([]replication.Region{{Off: 1 << 29, Len: 1 << 29}}))
	f.Add([]byte{0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		const size = 1 << 30
		rs, err := replica.DecodeRegions(b, size)
		if err != nil {
			if !errors.Is(err, replica.ErrBadState) {
				t.Fatalf("DecodeRegions error %v does not wrap ErrBadState", err)
			}
			return
		}
		var end int64
		for _, r := range rs {
			if r.Off < end || r.Len <= 0 || r.End() > size {
				t.Fatalf("DecodeRegions accepted region %+v after end %d on a %d-byte disk", r, end, size)
			}
			end = r.End()
		}
		if !bytes.Equal(replica.EncodeRegions(rs), b) {
			t.Fatalf("EncodeRegions(DecodeRegions(b)) differs from b")
		}
	})
}
