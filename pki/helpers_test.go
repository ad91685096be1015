package pki_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/pki"
)

// clock is a settable clock for expiry tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newSite creates a site identity in a fresh directory.
func newSite(t *testing.T, name string, c *clock) *pki.Identity {
	t.Helper()
	var opts []pki.Option
	if c != nil {
		opts = append(opts, pki.WithClock(c.Now))
	}
	id, err := pki.Init(t.TempDir(), name, opts...)
	if err != nil {
		t.Fatalf("Init(%q): %v", name, err)
	}
	return id
}

// serverEvent is what the test listener saw on one connection.
type serverEvent struct {
	proto string // negotiated ALPN, "" when the handshake failed
	site  string // PeerSite for replication connections
	peer  pki.PeerInfo
	err   error
}

// listener is a replication listener as the daemon runs it: ServerTLS,
// pairing connections to PairServer, others answered with "hello SITE\n".
type listener struct {
	addr   string
	events chan serverEvent
}

func listen(t *testing.T, id *pki.Identity) *listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	l := &listener{addr: ln.Addr().String(), events: make(chan serverEvent, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				l.events <- serveConn(ctx, id, tls.Server(c, id.ServerTLS(id.Peers())))
			}()
		}
	}()
	return l
}

func serveConn(ctx context.Context, id *pki.Identity, tc *tls.Conn) serverEvent {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return serverEvent{err: err}
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol == pki.ALPNPairing {
		peer, err := pki.PairServer(ctx, tc, id, id.Tokens())
		return serverEvent{proto: cs.NegotiatedProtocol, peer: peer, err: err}
	}
	site, err := pki.PeerSite(cs)
	if err != nil {
		return serverEvent{proto: cs.NegotiatedProtocol, err: err}
	}
	if _, err := tc.Write([]byte("hello " + site + "\n")); err != nil {
		return serverEvent{proto: cs.NegotiatedProtocol, site: site, err: err}
	}
	return serverEvent{proto: cs.NegotiatedProtocol, site: site}
}

func (l *listener) next(t *testing.T) serverEvent {
	t.Helper()
	select {
	case ev := <-l.events:
		return ev
	case <-time.After(15 * time.Second):
		t.Fatal("listener saw no connection")
		return serverEvent{}
	}
}

// pair runs PairClient from primary against addr with the token.
func pair(t *testing.T, primary *pki.Identity, addr string, tok pki.Token, opts ...pki.PairOption) (pki.PeerInfo, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	return pki.PairClient(ctx, conn, primary, tok, opts...)
}

// issue makes a token on secondary pointing at addr and parses it back.
func issue(t *testing.T, secondary *pki.Identity, addr string, ttl time.Duration) pki.Token {
	t.Helper()
	s, err := secondary.NewToken(addr, ttl)
	if err != nil {
		t.Fatalf("NewToken(%q): %v", addr, err)
	}
	tok, err := pki.ParseToken(s)
	if err != nil {
		t.Fatalf("ParseToken(NewToken()): %v", err)
	}
	return tok
}

// pairSites pairs primary with secondary through secondary's listener.
func pairSites(t *testing.T, primary, secondary *pki.Identity, l *listener) {
	t.Helper()
	tok := issue(t, secondary, l.addr, 0)
	if _, err := pair(t, primary, l.addr, tok); err != nil {
		t.Fatalf("PairClient: %v", err)
	}
	if ev := l.next(t); ev.err != nil {
		t.Fatalf("PairServer: %v", ev.err)
	}
}

// dialRepl dials addr with cfg and reads the listener's greeting.
func dialRepl(addr string, cfg *tls.Config) (string, tls.ConnectionState, error) {
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", tls.ConnectionState{}, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, err := tc.Read(buf)
	if err != nil {
		return "", tc.ConnectionState(), err
	}
	return string(buf[:n]), tc.ConnectionState(), nil
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}
