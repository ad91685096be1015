package disk_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
)

const (
	tapCrashEnv     = "TAP_CRASH_CHILD_DIR"
	tapCrashLagEnv  = "TAP_CRASH_REPLICATION_LAG" // "1": a small journal and a lagging replication hold
	crashBlock      = 4096
	crashWriters    = 4
	crashPerWriter  = 64
	crashDiskBlocks = crashWriters * crashPerWriter
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(tapCrashEnv); dir != "" {
		tapCrashChild(dir)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashBlockData is block b at generation gen: both in the first 16
// bytes and a fill derived from them, so a torn or misplaced block shows.
func crashBlockData(b, gen uint64) []byte {
	p := make([]byte, crashBlock)
	binary.BigEndian.PutUint64(p, b)
	binary.BigEndian.PutUint64(p[8:], gen)
	for i := 16; i < len(p); i++ {
		p[i] = byte(b*131 + gen*7 + uint64(i))
	}
	return p
}

// crashBlockGen returns the generation block b holds, 0 for zeroes.
func crashBlockGen(b uint64, p []byte) (uint64, error) {
	allZero := true
	for _, c := range p {
		if c != 0 {
			allZero = false
			break
		}
	}
	if allZero {
		return 0, nil
	}
	gen := binary.BigEndian.Uint64(p[8:])
	if want := crashBlockData(b, gen); string(want) != string(p) {
		return 0, fmt.Errorf("block %d torn or misplaced (header says block %d gen %d)", b, binary.BigEndian.Uint64(p), gen)
	}
	return gen, nil
}

func openCrashDisk(dir string) (*journal.Store, *journal.Log, *disk.File, error) {
	opts := journaltest.Options()
	if os.Getenv(tapCrashLagEnv) == "1" {
		opts.MaxBytes = 24 * (journal.HeaderSize + crashBlock) // overflows often
	}
	s, err := journal.Open(context.Background(), filepath.Join(dir, "journal"), opts, journaltest.Logger())
	if err != nil {
		return nil, nil, nil, err
	}
	l, err := s.Log("crash")
	if err != nil {
		s.Close()
		return nil, nil, nil, err
	}
	f, err := disk.OpenFile(filepath.Join(dir, "disk.img"), disk.FileOptions{Size: crashDiskBlocks * crashBlock})
	if err != nil {
		s.Close()
		return nil, nil, nil, err
	}
	return s, l, f, nil
}

// tapCrashChild writes generations of blocks through a tap from several
// goroutines, each owning its blocks, and prints "A block gen" for each
// write made durable (FUA, or completed before a Flush that returned).
func tapCrashChild(dir string) {
	die := func(what string, err error) {
		fmt.Fprintln(os.Stderr, "tap crash child:", what, err)
		os.Exit(3)
	}
	_, l, f, err := openCrashDisk(dir)
	if err != nil {
		die("open", err)
	}
	logger := journaltest.Logger()
	if os.Getenv(tapCrashLagEnv) == "1" {
		logger = nil // not a warning per overflow
	}
	tap, err := disk.NewTap(context.Background(), f, l, disk.TapOptions{CheckpointEvery: 30 * time.Millisecond}, logger)
	if err != nil {
		die("new tap", err)
	}
	if os.Getenv(tapCrashLagEnv) == "1" {
		go lagReplication(tap, l, die)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	ack := func(done [][2]uint64) {
		mu.Lock()
		for _, d := range done {
			fmt.Fprintf(out, "A %d %d\n", d[0], d[1])
		}
		out.Flush()
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := 0; w < crashWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			gens := make([]uint64, crashPerWriter)
			buf := make([]byte, crashBlock)
			for i := range gens {
				b := uint64(w*crashPerWriter + i)
				if _, err := tap.ReadAt(buf, int64(b)*crashBlock); err != nil {
					die("read", err)
				}
				g, err := crashBlockGen(b, buf)
				if err != nil {
					die("start state", err)
				}
				gens[i] = g
			}
			var unflushed [][2]uint64
			for {
				i := r.IntN(crashPerWriter)
				b := uint64(w*crashPerWriter + i)
				gens[i]++
				p := crashBlockData(b, gens[i])
				// Sometimes several blocks in one write.
				if r.IntN(4) == 0 && i+1 < crashPerWriter {
					gens[i+1]++
					p = append(p, crashBlockData(b+1, gens[i+1])...)
				}
				fua := r.IntN(8) == 0
				var err error
				if fua {
					_, err = tap.WriteAtFUA(p, int64(b)*crashBlock)
				} else {
					_, err = tap.WriteAt(p, int64(b)*crashBlock)
				}
				if err != nil {
					die("write", err)
				}
				for k := 0; k < len(p)/crashBlock; k++ {
					unflushed = append(unflushed, [2]uint64{b + uint64(k), gens[i+k]})
				}
				if fua {
					ack(unflushed[len(unflushed)-len(p)/crashBlock:])
					unflushed = unflushed[:len(unflushed)-len(p)/crashBlock]
				}
				if r.IntN(16) == 0 {
					if err := tap.Flush(context.Background()); err != nil {
						die("flush", err)
					}
					ack(unflushed)
					unflushed = unflushed[:0]
				}
			}
		}()
	}
	wg.Wait()
}

// lagReplication plays a replication link that ships late and sometimes
// not at all: it moves the journal's replication hold forward by a random
// part of what is committed, or, once the tap overflowed, leaves it a
// while and then resyncs (Resume, then the dirty regions cleared) with
// the hold at the head.
func lagReplication(tap *disk.Tap, l *journal.Log, die func(string, error)) {
	const hold = "replication"
	ctx := context.Background()
	if _, ok := l.Holds()[hold]; !ok {
		if err := l.SetHold(hold, l.Committed()); err != nil {
			die("set hold", err)
		}
	}
	r := rand.New(rand.NewPCG(99, uint64(time.Now().UnixNano())))
	for {
		time.Sleep(time.Duration(1+r.IntN(5)) * time.Millisecond)
		if tap.Overflowed() {
			if r.IntN(4) != 0 {
				continue // the link stays down
			}
			if err := l.SetHold(hold, l.Committed()); err != nil {
				die("set hold", err)
			}
			if err := tap.Resume(ctx); err != nil {
				die("resume", err)
			}
			regs, gen := tap.DirtyRegions()
			if err := tap.ClearDirty(ctx, regs, gen); err != nil {
				die("clear dirty", err)
			}
			continue
		}
		h, c := l.Holds()[hold], l.Committed()
		if c > h && r.IntN(3) == 0 {
			if err := l.SetHold(hold, h+1+r.Uint64N(c-h)); err != nil {
				die("set hold", err)
			}
		}
	}
}

// TestTapCrashRecovery kills a process writing through a tap at random
// moments, many rounds on the same disk, and checks after each restart
// that every write acknowledged as durable is there, whole.
func TestTapCrashRecovery(t *testing.T) { runTapCrash(t) }

// TestTapCrashRecoveryReplicationLag is TestTapCrashRecovery with a
// journal that holds 24 blocks and a replication hold that lags it,
// stops, and resyncs after overflow: the store's checkpoints are skipped
// behind the hold, and writes alternate between journaled and
// unjournaled; no replay may undo a newer write.
func TestTapCrashRecoveryReplicationLag(t *testing.T) {
	t.Setenv(tapCrashLagEnv, "1")
	runTapCrash(t)
}

func runTapCrash(t *testing.T) {
	dir := t.TempDir()
	rounds := 10
	if testing.Short() {
		rounds = 3
	}
	acked := make([]uint64, crashDiskBlocks)
	for round := 0; round < rounds; round++ {
		var n int
		journaltest.KillChild(t, tapCrashEnv, dir, 600*time.Millisecond, func(f []string) {
			if len(f) != 3 || f[0] != "A" {
				return
			}
			b, _ := strconv.ParseUint(f[1], 10, 64)
			g, _ := strconv.ParseUint(f[2], 10, 64)
			if b < crashDiskBlocks {
				acked[b] = max(acked[b], g)
				n++
			}
		})
		if n == 0 {
			t.Fatalf("round %d: child acknowledged nothing before the kill", round)
		}

		s, l, f, err := openCrashDisk(dir)
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		if rec := l.Recovery(); rec.Cut != 0 {
			t.Errorf("round %d: journal cut %d records: %v", round, rec.Cut, rec.Err)
		}
		tap, err := disk.NewTap(context.Background(), f, l, disk.TapOptions{CheckpointEvery: -1}, journaltest.Logger())
		if err != nil {
			t.Fatalf("round %d: NewTap: %v", round, err)
		}
		buf := make([]byte, crashBlock)
		bad := 0
		for b := uint64(0); b < crashDiskBlocks; b++ {
			tap.ReadAt(buf, int64(b)*crashBlock)
			g, err := crashBlockGen(b, buf)
			if err != nil {
				t.Errorf("round %d: %v", round, err)
				bad++
			} else if g < acked[b] {
				t.Errorf("round %d: block %d has gen %d, but gen %d was acknowledged durable", round, b, g, acked[b])
				bad++
			}
			if bad > 10 {
				t.FailNow()
			}
		}
		t.Logf("round %d: %d acknowledgements, journal head %d", round, n, l.Head())
		if err := tap.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
