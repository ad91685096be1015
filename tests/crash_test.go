package tests

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/nbd"
)

// crashBlock is the unit the crash test writes: a header naming the block
// and its version, a pattern derived from both, and a trailing checksum,
// so a read shows which write it holds and whether it is whole.
const crashBlock = 4096

func crashPattern(block, version uint64) []byte {
	p := make([]byte, crashBlock)
	binary.LittleEndian.PutUint64(p[0:], block)
	binary.LittleEndian.PutUint64(p[8:], version)
	r := rand.New(rand.NewPCG(block, version))
	for i := 16; i < crashBlock-4; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	binary.LittleEndian.PutUint32(p[crashBlock-4:], crc32.ChecksumIEEE(p[:crashBlock-4]))
	return p
}

// decodeCrashBlock returns the version a block holds (0 for never written)
// or an error when it is torn or foreign.
func decodeCrashBlock(block uint64, p []byte) (uint64, error) {
	allZero := true
	for _, b := range p {
		if b != 0 {
			allZero = false
			break
		}
	}
	if allZero {
		return 0, nil
	}
	if crc32.ChecksumIEEE(p[:crashBlock-4]) != binary.LittleEndian.Uint32(p[crashBlock-4:]) {
		return 0, fmt.Errorf("block %d: checksum mismatch (torn or damaged)", block)
	}
	if got := binary.LittleEndian.Uint64(p[0:]); got != block {
		return 0, fmt.Errorf("block %d holds block %d's data", block, got)
	}
	return binary.LittleEndian.Uint64(p[8:]), nil
}

// blockState is what the test knows of one block: the newest version that
// must have survived (flushed, or written with FUA) and the newest version
// it ever sent.
type blockState struct {
	durable uint64
	sent    uint64
}

// crashLoad is the crash tests' workload on export vol1 of a site: it
// writes whole-block patterns from several connections, with a FLUSH
// after about one write in 8 and the FUA flag on one in 16, and keeps
// what each block must hold after a crash.
type crashLoad struct {
	blocks, writers int
	rng             *rand.Rand
	// ackDurable: every acknowledged write is durable (sync replication).
	ackDurable bool
	// quiet is how long before the crash the writers stop flushing and
	// sending FUA: the writes of that stretch are all in the page cache
	// (and, replicated, already shipped) when the power goes.
	quiet  time.Duration
	noSync atomic.Bool

	mu      sync.Mutex
	state   []blockState
	writes  int64
	flushes int64
}

func newCrashLoad(blocks, writers int) *crashLoad {
	return &crashLoad{
		blocks: blocks, writers: writers,
		rng:   rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano()))),
		state: make([]blockState, blocks),
	}
}

// run writes to vol1 on s until ctx ends and returns once every writer
// has stopped (after ctx ends, or when the daemon dies under it).
func (l *crashLoad) run(ctx context.Context, t *testing.T, s *site, round int) *sync.WaitGroup {
	t.Helper()
	var wg sync.WaitGroup
	l.writes, l.flushes = 0, 0
	for w := 0; w < l.writers; w++ {
		c, err := nbd.Dial(ctx, "unix", s.nbd, "vol1", nbd.ClientOptions{})
		if err != nil {
			t.Fatalf("round %d: dial: %v", round, err)
		}
		wg.Add(1)
		go func(w int, c *nbd.Client, seed uint64) {
			defer wg.Done()
			defer c.Close()
			l.write(ctx, c, w, rand.New(rand.NewPCG(seed, uint64(w))))
		}(w, c, l.rng.Uint64())
	}
	return &wg
}

// runThenCrash runs the load on s for a random pause of at least least
// and less than least+span, then calls crash, which must stop the
// daemon the writers talk to, and waits for the writers.
func (l *crashLoad) runThenCrash(t *testing.T, s *site, round int, least, span time.Duration, crash func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	wg := l.run(ctx, t, s, round)
	time.Sleep(least + time.Duration(l.rng.Int64N(int64(span))))
	l.noSync.Store(true)
	time.Sleep(l.quiet)
	crash()
	cancel()
	wg.Wait()
	l.noSync.Store(false)
}

// write is one writer's loop.
func (l *crashLoad) write(ctx context.Context, c *nbd.Client, w int, r *rand.Rand) {
	// pending holds versions written since the last flush.
	pending := map[uint64]uint64{}
	for ctx.Err() == nil {
		// Each writer owns the blocks b with b%writers == w, so one
		// block's versions are written in order.
		b := uint64(r.IntN(l.blocks/l.writers)*l.writers + w)
		l.mu.Lock()
		l.state[b].sent++
		v := l.state[b].sent
		l.mu.Unlock()
		write := c.WriteAt
		fua := r.IntN(16) == 0 && !l.noSync.Load()
		if fua {
			write = c.WriteAtFUA
		}
		if _, err := write(crashPattern(b, v), int64(b)*crashBlock); err != nil {
			return
		}
		l.mu.Lock()
		l.writes++
		if fua || l.ackDurable {
			l.state[b].durable = max(l.state[b].durable, v)
		} else {
			pending[b] = v
		}
		l.mu.Unlock()
		if r.IntN(8) == 0 && !l.noSync.Load() {
			if err := c.Flush(ctx); err != nil {
				return
			}
			l.mu.Lock()
			for pb, pv := range pending {
				l.state[pb].durable = max(l.state[pb].durable, pv)
			}
			l.flushes++
			l.mu.Unlock()
			clear(pending)
		}
	}
}

// check reads every block of vol1 from the restarted site: each holds a
// whole write (never a torn one), at least the last durable version and
// no version that was never sent. What survived becomes the floor.
func (l *crashLoad) check(t *testing.T, s *site, round int) {
	t.Helper()
	l.checkExport(t, s, "vol1", round)
}

// checkExport is check on any export of s that holds vol1's blocks.
func (l *crashLoad) checkExport(t *testing.T, s *site, export string, round int) {
	t.Helper()
	buf := readAll(t, s, export, l.blocks*crashBlock)
	for b := uint64(0); b < uint64(l.blocks); b++ {
		v, err := decodeCrashBlock(b, buf[b*crashBlock:(b+1)*crashBlock])
		if err != nil {
			t.Fatalf("round %d: %s: %v", round, export, err)
		}
		st := l.state[b]
		if v < st.durable || v > st.sent {
			t.Fatalf("round %d: %s: block %d holds version %d, want between durable %d and sent %d", round, export, b, v, st.durable, st.sent)
		}
		// Versions above it that were lost will be sent again with new
		// numbers.
		l.state[b] = blockState{durable: v, sent: max(st.sent, v)}
	}
}

// checkCleanRestart checks that a clean restart changes nothing: the
// journal and the store agree.
func checkCleanRestart(t *testing.T, s *site, n int) {
	t.Helper()
	before := readAll(t, s, "vol1", n)
	s.stop()
	s.start()
	if after := readAll(t, s, "vol1", n); string(before) != string(after) {
		t.Fatalf("a clean restart changed the disk")
	}
}

// TestCrashKill9 writes patterns through NBD under load from several
// connections, kills the daemon with SIGKILL at a random moment, restarts
// it and checks every block (see crashLoad.check).
func TestCrashKill9(t *testing.T) {
	const rounds, blocks = 8, 1024 // 4 MiB of the disk
	s := newSite(t, "alpha")
	s.start()
	s.mustTandem("disk", "create", "vol1", "--size", "16M")
	load := newCrashLoad(blocks, 4)
	for round := 0; round < rounds; round++ {
		load.runThenCrash(t, s, round, 150*time.Millisecond, 600*time.Millisecond, s.kill)
		t.Logf("round %d: killed after %d writes, %d flushes", round, load.writes, load.flushes)
		s.start()
		load.check(t, s, round)
	}
	checkCleanRestart(t, s, blocks*crashBlock)
}

func readAll(t *testing.T, s *site, export string, n int) []byte {
	t.Helper()
	c, err := nbd.Dial(context.Background(), "unix", s.nbd, export, nbd.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, n)
	if _, err := c.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	return buf
}
