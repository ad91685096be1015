package journal_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/journal/journaltest"
)

// crashEnv names the directory a child process appends to until it is
// killed; see TestMain.
const crashEnv = "JOURNAL_CRASH_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashPayload is a self-describing payload: writer, counter, then a
// fill derived from both, so a reader can tell a whole one from a torn or
// mixed one.
func crashPayload(writer, i uint32, n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint32(b, writer)
	binary.BigEndian.PutUint32(b[4:], i)
	for j := 8; j < n; j++ {
		b[j] = byte(writer*7 + i*13 + uint32(j))
	}
	return b
}

func checkCrashPayload(b []byte) error {
	if len(b) < 8 {
		return fmt.Errorf("payload of %d bytes", len(b))
	}
	want := crashPayload(binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:]), len(b))
	if string(want) != string(b) {
		return fmt.Errorf("payload of writer %d #%d damaged", binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:]))
	}
	return nil
}

// crashChild appends from 4 goroutines, printing "C seq" once a record is
// committed and "S seq" once a Sync that started after seq was appended
// returns. It releases old records now and then, so a kill can also land
// in a release.
func crashChild(dir string) {
	ctx := context.Background()
	s, err := journal.Open(ctx, dir, journaltest.Options(), journaltest.Logger())
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	l, err := s.Log("crash")
	if err != nil {
		fmt.Fprintln(os.Stderr, "child log:", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	say := func(kind byte, seq uint64) {
		mu.Lock()
		fmt.Fprintf(out, "%c %d\n", kind, seq)
		out.Flush()
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := uint32(0); w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for i := uint32(0); ; i++ {
				size := 8 + r.IntN(16<<10)
				p, err := l.Append(ctx, journal.Record{Kind: journal.KindWrite, Off: int64(r.IntN(1 << 20)), Len: int64(size), Data: crashPayload(w, i, size)})
				if err != nil {
					fmt.Fprintln(os.Stderr, "child append:", err)
					os.Exit(3)
				}
				if err := p.Wait(ctx); err != nil {
					fmt.Fprintln(os.Stderr, "child wait:", err)
					os.Exit(3)
				}
				say('C', p.Seq())
				if i%8 == 0 {
					if err := l.Sync(ctx); err != nil {
						fmt.Fprintln(os.Stderr, "child sync:", err)
						os.Exit(3)
					}
					say('S', p.Seq())
				}
				if w == 0 && i%200 == 199 {
					if c := l.Committed(); c > 100 {
						if err := l.SetHold("apply", c-100); err != nil {
							fmt.Fprintln(os.Stderr, "child hold:", err)
							os.Exit(3)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
}

// TestCrashRecovery kills a child appending under load at random moments,
// several rounds on the same journal, and checks after each that every
// committed record is there, the chain verifies end to end and no record
// is damaged.
func TestCrashRecovery(t *testing.T) {
	dir := t.TempDir()
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	var lastHead uint64
	for round := 0; round < rounds; round++ {
		var maxCommitted uint64
		journaltest.KillChild(t, crashEnv, dir, 500*time.Millisecond, func(f []string) {
			if len(f) != 2 {
				return
			}
			seq, _ := strconv.ParseUint(f[1], 10, 64)
			maxCommitted = max(maxCommitted, seq)
		})
		if maxCommitted == 0 {
			t.Fatalf("round %d: child committed nothing before the kill", round)
		}

		s, err := journal.Open(context.Background(), dir, journaltest.Options(), journaltest.Logger())
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		l := journaltest.Log(t, s, "crash")
		if rec := l.Recovery(); rec.Cut != 0 {
			t.Errorf("round %d: recovery cut %d records at %d: %v", round, rec.Cut, rec.CutAt, rec.Err)
		}
		if got := l.Head(); got < maxCommitted {
			t.Errorf("round %d: head %d after kill, want at least the committed %d", round, got, maxCommitted)
		}
		if got := l.Head(); got < lastHead {
			t.Errorf("round %d: head went back from %d to %d", round, lastHead, got)
		}
		base, _ := l.Base()
		n := 0
		for _, r := range journaltest.Records(t, l, 0) {
			if err := checkCrashPayload(r.Data); err != nil {
				t.Errorf("round %d seq %d: %v", round, r.Seq, err)
			}
			n++
		}
		if uint64(n) != l.Head()-base {
			t.Errorf("round %d: read %d records, want head %d - base %d", round, n, l.Head(), base)
		}
		t.Logf("round %d: committed %d, head %d, base %d", round, maxCommitted, l.Head(), base)
		lastHead = l.Head()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
