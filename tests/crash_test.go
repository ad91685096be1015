package tests

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"sync"
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
// must have survived (flushed) and the newest version it ever sent.
type blockState struct {
	durable uint64
	sent    uint64
}

// TestCrashKill9 writes patterns through NBD under load from several
// connections, kills the daemon with SIGKILL at a random moment, restarts
// it and checks every block: it holds a whole write (never a torn one), at
// least the last flushed version, and no version that was never sent.
func TestCrashKill9(t *testing.T) {
	const (
		rounds  = 8
		writers = 4
		blocks  = 1024 // 4 MiB of the disk
	)
	s := newSite(t, "alpha")
	s.start()
	s.mustTandem("disk", "create", "vol1", "--size", "16M")
	state := make([]blockState, blocks)
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))

	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var writes, flushes int64
		for w := 0; w < writers; w++ {
			c, err := nbd.Dial(ctx, "unix", s.nbd, "vol1", nbd.ClientOptions{})
			if err != nil {
				t.Fatalf("round %d: dial: %v", round, err)
			}
			wg.Add(1)
			go func(w int, c *nbd.Client, seed uint64) {
				defer wg.Done()
				defer c.Close()
				r := rand.New(rand.NewPCG(seed, uint64(w)))
				// pending holds versions written since the last flush.
				pending := map[uint64]uint64{}
				for ctx.Err() == nil {
					// Each writer owns the blocks b with b%writers == w, so
					// one block's versions are written in order.
					b := uint64(r.IntN(blocks/writers)*writers + w)
					mu.Lock()
					state[b].sent++
					v := state[b].sent
					mu.Unlock()
					if _, err := c.WriteAt(crashPattern(b, v), int64(b)*crashBlock); err != nil {
						return
					}
					pending[b] = v
					mu.Lock()
					writes++
					mu.Unlock()
					if r.IntN(8) == 0 {
						if err := c.Flush(ctx); err != nil {
							return
						}
						mu.Lock()
						for pb, pv := range pending {
							if pv > state[pb].durable {
								state[pb].durable = pv
							}
						}
						flushes++
						mu.Unlock()
						clear(pending)
					}
				}
			}(w, c, rng.Uint64())
		}
		time.Sleep(time.Duration(150+rng.IntN(600)) * time.Millisecond)
		s.kill()
		cancel()
		wg.Wait()
		t.Logf("round %d: killed after %d writes, %d flushes", round, writes, flushes)

		s.start()
		c, err := nbd.Dial(context.Background(), "unix", s.nbd, "vol1", nbd.ClientOptions{})
		if err != nil {
			t.Fatalf("round %d: dial after restart: %v", round, err)
		}
		buf := make([]byte, blocks*crashBlock)
		if _, err := c.ReadAt(buf, 0); err != nil {
			t.Fatalf("round %d: read after restart: %v", round, err)
		}
		c.Close()
		for b := uint64(0); b < blocks; b++ {
			v, err := decodeCrashBlock(b, buf[b*crashBlock:(b+1)*crashBlock])
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			st := state[b]
			if v < st.durable || v > st.sent {
				t.Fatalf("round %d: block %d holds version %d, want between flushed %d and sent %d", round, b, v, st.durable, st.sent)
			}
			// What survived is now the floor, and versions above it that
			// were lost will be sent again with new numbers.
			state[b] = blockState{durable: v, sent: max(st.sent, v)}
		}
	}
	// A clean restart changes nothing: the journal and the store agree.
	before := readAll(t, s, "vol1", blocks*crashBlock)
	s.stop()
	s.start()
	after := readAll(t, s, "vol1", blocks*crashBlock)
	if string(before) != string(after) {
		t.Fatalf("a clean restart changed the disk")
	}
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
