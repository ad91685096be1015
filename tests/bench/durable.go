package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-dr/tandem/internal/aligned"
)

// durableChunk is the probe's write: the size of the secondary journal's
// largest group write.
const durableChunk = 8 << 20

// errNoDirectIO: the file system under the probe refuses O_DIRECT (tmpfs
// before Linux 6.6).
var errNoDirectIO = errors.New("the file system refuses O_DIRECT")

// durableRing is the size of the probe's file in the bench.
const durableRing = 512 << 20

// durableRate measures, for about d, how fast the device under dir takes
// writes that must be durable before the next one starts, as the
// secondary's journal makes each group of records durable before it
// acknowledges them: 8 MiB O_DIRECT writes, each followed by an
// fdatasync, over a file of ring bytes written once before it is timed
// (the journal overwrites the segments it recycles, whose blocks are
// allocated, so an fdatasync commits no file system metadata). It is the
// ceiling of sync mode's rate where both sites share one device, in
// MB/s. The file is removed.
func durableRate(ctx context.Context, dir string, ring int64, d time.Duration) (float64, error) {
	path := filepath.Join(dir, "durable-probe")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_DIRECT, 0o600)
	if errors.Is(err, unix.EINVAL) {
		return 0, errNoDirectIO
	}
	if err != nil {
		return 0, fmt.Errorf("durable write probe: %w", err)
	}
	defer os.Remove(path)
	defer f.Close()
	var scratch []byte
	buf := aligned.Buf(&scratch, durableChunk)
	for i := range buf {
		buf[i] = byte(i*131 + i>>11) // not zeroes, not a run
	}
	write := func(off int64) error {
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("durable write probe at %d: %w", off, err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return fmt.Errorf("durable write probe fdatasync: %w", err)
		}
		return nil
	}
	for off := int64(0); off < ring; off += durableChunk {
		if err := write(off); err != nil {
			return 0, err
		}
	}
	start := time.Now()
	var n int64
	for time.Since(start) < d {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if err := write(n % ring); err != nil {
			return 0, err
		}
		n += durableChunk
	}
	return float64(n) / time.Since(start).Seconds() / 1e6, nil
}
