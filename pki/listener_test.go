package pki_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/pki"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitLog waits until the log holds want.
func waitLog(t *testing.T, log *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q; it holds:\n%s", want, log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type acceptResult struct {
	conn net.Conn
	err  error
}

func startListener(t *testing.T, id *pki.Identity, onPaired func(pki.PeerInfo)) (*pki.Listener, *syncBuffer, chan acceptResult) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	l, err := pki.NewListener(inner, pki.ListenerConfig{
		Identity: id, Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HandshakeTimeout: 2 * time.Second, OnPaired: onPaired,
	})
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan acceptResult, 8)
	go func() {
		for {
			c, err := l.Accept()
			accepted <- acceptResult{c, err}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l, log, accepted
}

func TestListener(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	paired := make(chan pki.PeerInfo, 1)
	l, log, accepted := startListener(t, secondary, func(p pki.PeerInfo) { paired <- p })
	addr := l.Addr().String()

	// A client that connects and says nothing must not hold up others.
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	tok := issue(t, secondary, addr, 0)
	if _, err := pair(t, primary, addr, tok); err != nil {
		t.Fatalf("PairClient through the Listener: %v", err)
	}
	select {
	case p := <-paired:
		if p.Site != "primary" {
			t.Errorf("OnPaired got site %q, want primary", p.Site)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnPaired was not called")
	}
	waitLog(t, log, `msg="replication listener: paired"`)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := primary.DialPeer(ctx, "secondary", "")
	if err != nil {
		t.Fatalf("DialPeer: %v", err)
	}
	defer c.Close()
	var got acceptResult
	select {
	case got = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("Accept returned nothing for a paired site")
	}
	if got.err != nil {
		t.Fatalf("Accept: %v", got.err)
	}
	defer got.conn.Close()
	tc, ok := got.conn.(*pki.Conn)
	if !ok {
		t.Fatalf("Accept returned %T, want *pki.Conn", got.conn)
	}
	if site, err := pki.PeerSite(tc.ConnectionState()); err != nil || site != "primary" {
		t.Errorf("PeerSite of the accepted connection = %q, %v, want primary", site, err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ping" {
		t.Errorf("server read %q, %v, want ping", buf, err)
	}
	// Large writes, whose TLS records the Conn coalesces, arrive whole and
	// in order, both ways.
	for _, dir := range []struct {
		name string
		w, r net.Conn
	}{{"primary to secondary", c, tc}, {"secondary to primary", tc, c}} {
		big := make([]byte, 3<<20+12345)
		for i := range big {
			big[i] = byte(i*7 + i>>16)
		}
		werr := make(chan error, 1)
		go func() {
			_, err := dir.w.Write(big)
			if err == nil {
				_, err = dir.w.Write(big[:100])
			}
			werr <- err
		}()
		got := make([]byte, len(big)+100)
		if _, err := io.ReadFull(dir.r, got); err != nil {
			t.Fatalf("%s: read: %v", dir.name, err)
		}
		if err := <-werr; err != nil {
			t.Fatalf("%s: write: %v", dir.name, err)
		}
		if !bytes.Equal(got[:len(big)], big) || !bytes.Equal(got[len(big):], big[:100]) {
			t.Fatalf("%s: the bytes read differ from those written", dir.name)
		}
	}

	// An unpaired site is refused, logged, and never accepted.
	stranger := newSite(t, "stranger", nil)
	if _, _, err := dialRepl(addr, rogueConfig(stranger)); err == nil {
		t.Error("stranger was served")
	}
	waitLog(t, log, `site \"stranger\" is not paired`)
	// A replayed token is refused and logged.
	if _, err := pair(t, stranger, addr, tok); !errors.Is(err, pki.ErrPairRefused) {
		t.Errorf("replayed token through the Listener: got %v, want %v", err, pki.ErrPairRefused)
	}
	waitLog(t, log, `msg="replication listener: refused pairing"`)
	select {
	case r := <-accepted:
		t.Errorf("Accept returned %v, %v for a refused connection", r.conn, r.err)
	default:
	}

	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case r := <-accepted:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Errorf("Accept after Close: got %v, want net.ErrClosed", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

func TestDialPeerUnknown(t *testing.T) {
	primary := newSite(t, "primary", nil)
	_, err := primary.DialPeer(context.Background(), "nobody", "")
	wantErr(t, "DialPeer of an unpaired site", err, pki.ErrPeerUnknown)
}
