package aligned_test

import (
	"testing"

	"github.com/tandem-dr/tandem/internal/aligned"
)

func TestBuf(t *testing.T) {
	var scratch []byte
	for _, n := range []int{1, aligned.Size, 3*aligned.Size + 5, 1 << 20, 100} {
		b := aligned.Buf(&scratch, n)
		if len(b) != n || !aligned.Starts(b) {
			t.Fatalf("Buf(%d): len %d, aligned %v", n, len(b), aligned.Starts(b))
		}
	}
	if cap(scratch) < 1<<20 {
		t.Errorf("scratch not kept: cap %d", cap(scratch))
	}
	if aligned.Starts(aligned.Buf(&scratch, 8)[1:]) {
		t.Errorf("a slice one byte in starts aligned")
	}
}

func TestUp(t *testing.T) {
	for n, want := range map[int]int{0: 0, 1: aligned.Size, aligned.Size: aligned.Size, aligned.Size + 1: 2 * aligned.Size} {
		if got := aligned.Up(n); got != want {
			t.Errorf("Up(%d) = %d, want %d", n, got, want)
		}
	}
}
