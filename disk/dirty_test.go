package disk_test

import (
	"reflect"
	"testing"

	"github.com/tandem-dr/tandem/disk"
)

func TestDirtyMapMarkRegionsClear(t *testing.T) {
	const rs = 1 << 20
	m := disk.NewDirtyMap(10*rs+5, rs)
	if !m.Mark(0, 1) {
		t.Errorf("first Mark of region 0 reported not fresh")
	}
	if m.Mark(100, 5) {
		t.Errorf("second Mark of region 0 reported fresh")
	}
	m.Mark(rs-1, 2)    // regions 0 and 1
	m.Mark(5*rs, 3*rs) // regions 5, 6, 7
	m.Mark(10*rs, 5)   // the short last region
	regs, gen := m.Regions()
	want := []disk.Region{{Off: 0, Len: 2 * rs}, {Off: 5 * rs, Len: 3 * rs}, {Off: 10 * rs, Len: 5}}
	if !reflect.DeepEqual(regs, want) {
		t.Fatalf("Regions = %v, want %v", regs, want)
	}
	m.Mark(6*rs+7, 1) // written again after the snapshot
	m.Clear(regs, gen)
	regs, _ = m.Regions()
	if want := []disk.Region{{Off: 6 * rs, Len: rs}}; !reflect.DeepEqual(regs, want) {
		t.Errorf("Regions after Clear = %v, want %v (the region written after the snapshot)", regs, want)
	}
	if got := m.Len(); got != 1 {
		t.Errorf("Len = %d, want 1", got)
	}
}

func TestDirtyMapEncodeDecode(t *testing.T) {
	const rs = 4096
	size := int64(3*4096*rs + 123) // spans several bitmap chunks
	m := disk.NewDirtyMap(size, rs)
	for _, off := range []int64{0, 4095 * rs, 4096 * rs, 2*4096*rs + 17, size - 1} {
		m.Mark(off, 1)
	}
	chunks := m.Encode(false)
	if len(chunks) != 4 {
		t.Errorf("Encode gave %d chunks, want 4", len(chunks))
	}
	if again := m.Encode(false); len(again) != 0 {
		t.Errorf("second Encode gave %d changed chunks, want 0", len(again))
	}
	n := disk.NewDirtyMap(size, rs)
	for k, v := range chunks {
		if err := n.Decode(k, v); err != nil {
			t.Fatalf("Decode(%s): %v", k, err)
		}
	}
	got, _ := n.Regions()
	want, _ := m.Regions()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded Regions = %v, want %v", got, want)
	}
	m.Clear([]disk.Region{{Off: 0, Len: size}}, ^uint64(0))
	for k, v := range m.Encode(false) {
		if len(v) != 0 {
			t.Errorf("chunk %s after clearing everything has %d bytes, want empty (delete)", k, len(v))
		}
	}
	for _, bad := range []struct {
		key string
		val []byte
	}{{"x", []byte{1}}, {"-1", nil}, {"0", []byte{1, 2, 3}}} {
		if err := n.Decode(bad.key, bad.val); err == nil && bad.val != nil {
			t.Errorf("Decode(%q, %d bytes) accepted garbage", bad.key, len(bad.val))
		}
	}
	other := disk.NewDirtyMap(size, 2*rs)
	for k, v := range chunks {
		if err := other.Decode(k, v); err == nil {
			t.Errorf("Decode with another region size accepted chunk %s", k)
		}
	}
}
