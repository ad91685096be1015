package replication

import (
	"bytes"
	"testing"
)

// TestFramePoolBudget: a frameReader keeps the payload buffers given back
// up to maxFreeBytes, hands them out again, and lets them all go when the
// connection is idle.
func TestFramePoolBudget(t *testing.T) {
	fr := newFrameReader(bytes.NewReader(nil))
	const size = 3 << 20
	var bufs [][]byte
	for range 20 {
		bufs = append(bufs, make([]byte, size))
	}
	fr.recycle(bufs)
	if want := maxFreeBytes / size; len(fr.free) != want || fr.freeBytes != want*size {
		t.Fatalf("kept %d buffers (%d bytes) of 20; want %d within %d bytes", len(fr.free), fr.freeBytes, want, maxFreeBytes)
	}
	kept := len(fr.free)
	for i := range kept {
		if b := fr.reuse(); cap(b) != size {
			t.Fatalf("reuse %d gave a buffer of %d bytes; want a kept one", i, cap(b))
		}
	}
	if b := fr.reuse(); b != nil || fr.freeBytes != 0 {
		t.Fatalf("reuse with none kept = %d bytes, %d counted; want nil, 0", cap(b), fr.freeBytes)
	}
	fr.recycle(bufs[:2])
	fr.idle()
	if len(fr.free) != 0 || fr.freeBytes != 0 {
		t.Errorf("after idle: %d buffers, %d bytes kept; want none", len(fr.free), fr.freeBytes)
	}
}
