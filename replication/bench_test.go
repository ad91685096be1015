package replication_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/replication"
	"github.com/tandem-dr/tandem/replication/replicationtest"
)

// BenchmarkShip measures shipping 1 MiB writes of a mixed workload (half
// random, half text-like) over loopback TCP, from the primary's journal
// to the replica's, acknowledged.
func BenchmarkShip(b *testing.B) {
	for _, compress := range []string{replication.CompressZstd, replication.CompressNone} {
		b.Run(compress, func(b *testing.B) {
			const size = 256 << 20
			rng := rand.New(rand.NewPCG(1, 2))
			bufs := make([][]byte, 16)
			for i := range bufs {
				p := make([]byte, 1<<20)
				for j := 0; j < len(p)/2; j += 8 {
					v := rng.Uint64()
					for k := 0; k < 8; k++ {
						p[j+k] = byte(v >> (8 * k))
					}
				}
				for j := len(p) / 2; j < len(p); j++ {
					p[j] = "the quick brown fox jumps over the lazy dog "[j%44]
				}
				bufs[i] = p
			}
			src := replicationtest.NewMemSource(size, 0)
			sink := replicationtest.NewMemSink(size)
			sink.JournalLimit = 64
			sec := startSecondary(b, "", map[string]*replicationtest.MemSink{"vm1": sink})
			d := newDialer(sec.addr())
			s, _ := startSender(b, src, d.dial, func(c *replication.SenderConfig) { c.Compress = compress })
			src.Write(0, []byte("boot"))
			waitAcked(b, s, src)
			b.SetBytes(1 << 20)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				src.Write(int64(i%(size>>20))<<20, bufs[i%len(bufs)])
				if i%64 == 63 {
					waitBacklog(s, 256) // bound memory: the sink keeps copies
				}
			}
			waitAcked(b, s, src)
			b.StopTimer()
			st := s.Status(context.Background())
			b.ReportMetric(float64(st.WireBytes)/float64(st.RawBytes), "wire/raw")
		})
	}
}

func waitAcked(b testing.TB, s *replication.Sender, src *replicationtest.MemSource) {
	head, _ := src.Head(context.Background())
	deadline := time.Now().Add(60 * time.Second)
	for s.Status(context.Background()).ConsistentSeq < head.Seq {
		if time.Now().After(deadline) {
			b.Fatalf("not acknowledged: %+v", s.Status(context.Background()))
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func waitBacklog(s *replication.Sender, max uint64) {
	for {
		st := s.Status(context.Background())
		if st.HeadSeq-st.AckedSeq < max {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// BenchmarkSyncModeWrite measures one write's round trip in sync mode over
// loopback TCP: journal at the primary, ship, durable append at the
// replica, acknowledgement, WaitAcked returns.
func BenchmarkSyncModeWrite(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			src := replicationtest.NewMemSource(64<<20, 0)
			sink := replicationtest.NewMemSink(64 << 20)
			sink.JournalLimit = 64
			sec := startSecondary(b, "", map[string]*replicationtest.MemSink{"vm1": sink})
			d := newDialer(sec.addr())
			s, _ := startSender(b, src, d.dial, nil)
			src.Write(0, []byte("boot"))
			waitAcked(b, s, src)
			p := make([]byte, size)
			for i := range p {
				p[i] = byte(i * 7)
			}
			ctx := context.Background()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				seq := src.Write(int64(i%32)*int64(size), p)
				if err := s.WaitAcked(ctx, seq); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if st := s.Status(ctx); st.SyncDegraded {
				b.Fatalf("sync mode degraded during the benchmark: %+v", st)
			}
		})
	}
}
