package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers are pooled by power-of-two size class, from 4 KiB to
// MaxPayload, so steady-state reads and writes allocate nothing.
const (
	minClassShift = 12
	maxClassShift = 25 // 32 MiB == MaxPayload
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// getBuf returns a buffer of length n (n <= MaxPayload). Its contents are
// undefined.
func getBuf(n int) *[]byte {
	c := classOf(n)
	if v := bufPools[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

// putBuf returns a buffer from getBuf to its pool.
func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	c := cap(*b)
	if c < 1<<minClassShift || c&(c-1) != 0 || c > 1<<maxClassShift {
		return
	}
	bufPools[classOf(c)].Put(b)
}
