// Package aligned provides the memory buffers that direct I/O (O_DIRECT)
// needs: starting on, and sized in, multiples of the page size.
package aligned

import "unsafe"

// Size is the offset, length and memory alignment of direct I/O: the page
// size, a multiple of every logical block size in use.
const Size = 4096

// Buf returns n bytes of *scratch, which it first replaces by a larger
// buffer starting at a Size boundary when it is too small. Keep scratch
// (in a sync.Pool, say) to reuse the buffer.
func Buf(scratch *[]byte, n int) []byte {
	if cap(*scratch) < n {
		raw := make([]byte, n+Size)
		skip := int(-uintptr(unsafe.Pointer(unsafe.SliceData(raw))) & (Size - 1))
		*scratch = raw[skip : skip : skip+n]
	}
	return (*scratch)[:n]
}

// Starts reports whether p starts at a Size boundary.
func Starts(p []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))%Size == 0
}

// Up rounds n up to a multiple of Size.
func Up(n int) int { return (n + Size - 1) &^ (Size - 1) }
