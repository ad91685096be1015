package replication_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/replication"
	"github.com/tandem-dr/tandem/replication/replicationtest"
)

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// secondary is a Server on loopback with one sink per disk name.
type secondary struct {
	t     testing.TB
	srv   *replication.Server
	ln    net.Listener
	done  chan error
	logs  *logBuffer
	sinks map[string]*replicationtest.MemSink

	pmu      sync.Mutex
	policies []string // "disk retention" for each policy received
}

// policiesSeen returns the policies the server reported, in order.
func (s *secondary) policiesSeen() []string {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	return slices.Clone(s.policies)
}

func startSecondary(t testing.TB, addr string, sinks map[string]*replicationtest.MemSink) *secondary {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &secondary{t: t, ln: ln, done: make(chan error, 1), logs: &logBuffer{}, sinks: sinks}
	s.srv, err = replication.NewServer(replication.ServerConfig{
		Logger: s.logs.logger(),
		Lookup: func(ctx context.Context, site, disk string) (replication.Sink, error) {
			if sk, ok := sinks[disk]; ok {
				return sk, nil
			}
			return nil, fmt.Errorf("disk %q: %w", disk, replication.ErrUnknownDisk)
		},
		Policy: func(ctx context.Context, site, disk string, p replication.Policy) {
			s.pmu.Lock()
			defer s.pmu.Unlock()
			// The clock offset, measured on one machine, is the link's
			// delay: well under a second.
			clock := "clock ok"
			if p.Clock.Abs() >= time.Second {
				clock = "clock off by " + p.Clock.String()
			}
			s.policies = append(s.policies, disk+" "+p.Retention.String()+" "+clock)
		},
	})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	go func() { s.done <- s.srv.Serve(context.Background(), ln) }()
	t.Cleanup(s.stop)
	return s
}

func (s *secondary) addr() string { return s.ln.Addr().String() }

// stop shuts the server down (idempotent).
func (s *secondary) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.t.Errorf("Shutdown: %v", err)
	}
}

// dialer dials whatever address addr holds; failing makes it fail.
type dialer struct {
	addr    atomic.Value
	failing atomic.Bool
	wrap    func(net.Conn) net.Conn
	dials   atomic.Int64
}

func newDialer(addr string) *dialer {
	d := &dialer{}
	d.addr.Store(addr)
	return d
}

func (d *dialer) dial(ctx context.Context) (net.Conn, error) {
	d.dials.Add(1)
	if d.failing.Load() {
		return nil, fmt.Errorf("dial: secondary away (test)")
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", d.addr.Load().(string))
	if err != nil {
		return nil, err
	}
	if d.wrap != nil {
		return d.wrap(c), nil
	}
	return c, nil
}

func startSender(t testing.TB, src replication.Source, dial func(context.Context) (net.Conn, error), mod func(*replication.SenderConfig)) (*replication.Sender, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg := replication.SenderConfig{
		Disk: "vm1", Dial: dial, Source: src, Logger: logs.logger(),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Heartbeat: 100 * time.Millisecond, Timeout: 3 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := replication.NewSender(cfg)
	if err != nil {
		t.Fatalf("NewSender: %v", err)
	}
	if err := s.Open(); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { closeSender(t, s) })
	return s, logs
}

// startPair starts a secondary serving one empty disk "vm1" and a sender
// of a new empty source to it, configured as startSender does and then by
// mod (which may be nil).
func startPair(t testing.TB, mod func(*replication.SenderConfig)) (*replicationtest.MemSource, *replicationtest.MemSink, *secondary, *dialer, *replication.Sender) {
	t.Helper()
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	s, _ := startSender(t, src, d.dial, mod)
	return src, sink, sec, d, s
}

func closeSender(t testing.TB, s *replication.Sender) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// waitSynced waits until the sink's consistent point is the source's
// head and the sender says protected, then compares the disks.
func waitSynced(t testing.TB, s *replication.Sender, src *replicationtest.MemSource, sink *replicationtest.MemSink, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		head, _ := src.Head(context.Background())
		_, seq := sink.Snapshot()
		st := s.Status(context.Background())
		if seq == head.Seq && st.State == replication.StateProtected && st.AckedSeq == head.Seq && !src.NeedsResync() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not synced after %v: source head %d, replica at %d, status %+v", timeout, head.Seq, seq, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	compareDisks(t, src, sink)
}

func compareDisks(t testing.TB, src *replicationtest.MemSource, sink *replicationtest.MemSink) {
	t.Helper()
	want, wseq := src.Snapshot()
	got, gseq := sink.Snapshot()
	if gseq != wseq {
		t.Fatalf("replica at seq %d, primary at %d", gseq, wseq)
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("replica differs from primary at seq %d: first difference at byte %d (block %d): got %#x want %#x",
					gseq, i, i/4096, got[i], want[i])
			}
		}
	}
	if gaps := sink.Gaps(); len(gaps) != 0 {
		t.Fatalf("sink saw records out of order: %s", strings.Join(gaps, "; "))
	}
}

// load writes random blocks (some compressible, some zero ranges) until
// stop is closed, from several goroutines.
func load(src *replicationtest.MemSource, workers int, stop <-chan struct{}, pause time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	size := src.Size()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, seed*7+1))
			buf := make([]byte, 64<<10)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := int64(4096 * (1 + rng.IntN(16)))
				off := rng.Int64N(size/4096-16) * 4096
				switch rng.IntN(10) {
				case 0:
					src.Zero(off, n)
				default:
					b := buf[:n]
					for j := range b {
						b[j] = byte(rng.IntN(4)) // compressible but not constant
					}
					src.Write(off, b)
				}
				if pause > 0 {
					time.Sleep(pause)
				}
			}
		}(uint64(w + 1))
	}
	return &wg
}

// waitLastError waits up to timeout for the sender's LastError to name
// want, and fails the test with its status if it does not.
func waitLastError(t testing.TB, s *replication.Sender, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(s.Status(context.Background()).LastError, want) {
		if time.Now().After(deadline) {
			t.Fatalf("sender status %+v; want a LastError naming %q", s.Status(context.Background()), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
