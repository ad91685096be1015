package journal

import (
	"math/bits"
	"sync"
)

// Encoded records are built in pooled buffers, returned once badger has
// copied them (after the commit), so that a stream of 1 MiB writes does
// not allocate 1 MiB per record. Classes are powers of two of the data
// size, from 4 KiB to MaxData, plus room for the header.
const (
	minPoolShift = 12
	maxPoolShift = 20 // MaxData
)

var bufPools [maxPoolShift - minPoolShift + 1]sync.Pool

func poolClass(n int) int {
	d := max(n-HeaderSize, 1)
	k := bits.Len(uint(d - 1))
	if k < minPoolShift {
		k = minPoolShift
	}
	return k
}

// getBuf returns an empty buffer with room for n bytes.
func getBuf(n int) []byte {
	k := poolClass(n)
	if k > maxPoolShift {
		return make([]byte, 0, n)
	}
	if b, ok := bufPools[k-minPoolShift].Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:0]
	}
	return make([]byte, 0, (1<<k)+HeaderSize)
}

// putBuf returns a buffer from getBuf to its pool.
func putBuf(b []byte) {
	k := poolClass(cap(b))
	if k > maxPoolShift || cap(b) != (1<<k)+HeaderSize {
		return
	}
	bufPools[k-minPoolShift].Put(&b)
}
