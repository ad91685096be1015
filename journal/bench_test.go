package journal_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
)

// benchAppend appends 4 KiB records from writers goroutines; every
// syncEvery-th append of a writer is followed by a Sync (0: never).
func benchAppend(b *testing.B, writers, syncEvery int) {
	ctx := context.Background()
	opts := journal.Options{GCInterval: -1, MaxBytes: 1 << 40}
	s := journaltest.Open(b, "", opts)
	l := journaltest.Log(b, s, "bench")
	data := make([]byte, 4096)
	var n atomic.Int64
	b.SetBytes(4096)
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; n.Add(1) <= int64(b.N); i++ {
				p, err := l.Append(ctx, journal.Record{Kind: journal.KindWrite, Off: int64(i) * 4096, Len: 4096, Data: data})
				if err != nil {
					b.Error(err)
					return
				}
				if err := p.Wait(ctx); err != nil {
					b.Error(err)
					return
				}
				if syncEvery > 0 && i%syncEvery == 0 {
					if err := l.Sync(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}

// One writer waiting for each commit: no batching possible.
func BenchmarkAppend4KSerial(b *testing.B) { benchAppend(b, 1, 0) }

// 16 writers: the committer batches what queues up meanwhile.
func BenchmarkAppend4KBatched16(b *testing.B) { benchAppend(b, 16, 0) }

// One writer, Sync after every append: one fsync per record.
func BenchmarkAppend4KSyncEach(b *testing.B) { benchAppend(b, 1, 1) }

// 16 writers, each Syncing after every append: Syncs share fsyncs.
func BenchmarkAppend4KSyncEachBatched16(b *testing.B) { benchAppend(b, 16, 1) }

// BenchmarkAppendReceived4x1M appends batches of four sealed 1 MiB records
// as the secondary receives them (AppendVerified: direct I/O, durable on
// return), the shape of a sync-mode replica's appends.
func BenchmarkAppendReceived4x1M(b *testing.B) {
	ctx := context.Background()
	s := journaltest.Open(b, "", journal.Options{GCInterval: -1, MaxBytes: 1 << 40})
	l := journaltest.Log(b, s, "replica")
	data := make([]byte, journal.MaxData)
	var prev uint64
	recs := make([]journal.Record, 4)
	b.SetBytes(int64(len(recs) * len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range recs {
			seq := uint64(i*len(recs) + k + 1)
			recs[k] = journal.Record{Seq: seq, Kind: journal.KindWrite, Off: int64(k) << 20, Len: int64(len(data)), Data: data}
			recs[k].Seal(prev)
			prev = recs[k].Sum
		}
		if err := l.AppendVerified(ctx, recs); err != nil {
			b.Fatal(err)
		}
	}
}

// benchBatches reads 64 MiB of 1 MiB records into 4 MiB batches, as the
// replication sender builds its frames, with read.
func benchBatches(b *testing.B, read func(ctx context.Context, l *journal.Log, buf []byte) ([]byte, error)) {
	ctx := context.Background()
	s := journaltest.Open(b, "", journal.Options{GCInterval: -1, MaxBytes: 1 << 40})
	l := journaltest.Log(b, s, "bench")
	data := make([]byte, journal.MaxData)
	const n = 64
	for i := range n {
		journaltest.Write(b, l, int64(i)<<20, data)
	}
	buf := make([]byte, 0, 5<<20)
	b.SetBytes(n << 20)
	b.ResetTimer()
	for range b.N {
		var err error
		if buf, err = read(ctx, l, buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBatchesReadViews: each record read into ReadViews's buffer,
// then encoded into the batch (the sender before AppendViews).
func BenchmarkBatchesReadViews(b *testing.B) {
	benchBatches(b, func(ctx context.Context, l *journal.Log, buf []byte) ([]byte, error) {
		from := uint64(1)
		for {
			buf = buf[:0]
			err := l.ReadViews(ctx, from, func(r journal.Record) error {
				var err error
				if buf, err = r.AppendBinary(buf); err != nil {
					return err
				}
				from++
				if len(buf) >= 4<<20 {
					return errFull
				}
				return nil
			})
			if err != nil && err != errFull {
				return buf, err
			}
			if err == nil {
				return buf, nil
			}
		}
	})
}

// BenchmarkBatchesAppendViews: records read straight into the batch.
func BenchmarkBatchesAppendViews(b *testing.B) {
	benchBatches(b, func(ctx context.Context, l *journal.Log, buf []byte) ([]byte, error) {
		from := uint64(1)
		for {
			var err error
			buf, err = l.AppendViews(ctx, from, buf[:0], 4<<20, func(journal.Record) error { from++; return nil })
			if err != nil {
				return buf, err
			}
			if from > 64 {
				return buf, nil
			}
		}
	})
}

var errFull = errors.New("full")
