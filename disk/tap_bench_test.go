package disk_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
)

// benchTap writes bs-byte blocks through a tap from depth goroutines,
// sequentially (each goroutine takes the next block) or scattered.
func benchTap(b *testing.B, bs int64, depth int, journaled bool) {
	const size = 1 << 30
	dir := b.TempDir()
	f, err := disk.OpenFile(filepath.Join(dir, "disk.img"), disk.FileOptions{Size: size})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var w disk.Store = f
	if journaled {
		s, err := journal.Open(context.Background(), filepath.Join(dir, "journal"), journal.Options{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		l, err := s.Log("bench")
		if err != nil {
			b.Fatal(err)
		}
		tap, err := disk.NewTap(context.Background(), f, l, disk.TapOptions{CheckpointEvery: benchCPEvery, CheckpointBytes: benchCPBytes}, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer tap.Close(context.Background())
		w = tap
	}
	var next atomic.Int64
	b.SetBytes(bs)
	b.ResetTimer()
	var wg sync.WaitGroup
	for g := 0; g < depth; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, bs)
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				off := (i * bs) % size
				if bs < 64<<10 {
					off = (i * 7919 * bs) % size
				}
				p[0] = byte(i)
				if _, err := w.WriteAt(p, off); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkTapSeq1M(b *testing.B)   { benchTap(b, 1<<20, 16, true) }
func BenchmarkFileSeq1M(b *testing.B)  { benchTap(b, 1<<20, 16, false) }
func BenchmarkTapRand4K(b *testing.B)  { benchTap(b, 4096, 16, true) }
func BenchmarkFileRand4K(b *testing.B) { benchTap(b, 4096, 16, false) }

func BenchmarkTapRand4KNoCheckpoint(b *testing.B) {
	benchCPEvery, benchCPBytes = -1, -1
	defer func() { benchCPEvery, benchCPBytes = 0, 0 }()
	benchTap(b, 4096, 16, true)
}

func BenchmarkTapSeq1MNoCheckpoint(b *testing.B) {
	benchCPEvery, benchCPBytes = -1, -1
	defer func() { benchCPEvery, benchCPBytes = 0, 0 }()
	benchTap(b, 1<<20, 16, true)
}

var (
	benchCPEvery time.Duration
	benchCPBytes int64
)

// BenchmarkTapCheckpointBytes measures how the checkpoint size (one
// fdatasync of the store per CheckpointBytes journaled) throttles writes.
func BenchmarkTapCheckpointBytes(b *testing.B) {
	for _, mib := range []int64{16, 32, 64, 128, 256} {
		for _, w := range []struct {
			name string
			bs   int64
		}{{"rand4K", 4096}, {"seq1M", 1 << 20}} {
			b.Run(fmt.Sprintf("%s/%dMiB", w.name, mib), func(b *testing.B) {
				benchCPBytes = mib << 20
				defer func() { benchCPBytes = 0 }()
				benchTap(b, w.bs, 16, true)
			})
		}
	}
}
