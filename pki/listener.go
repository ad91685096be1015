package pki

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// DefaultHandshakeTimeout bounds a TLS handshake on the replication
// listener.
const DefaultHandshakeTimeout = 10 * time.Second

// Log keys of the Listener.
const (
	logKeyRemote = "remote"
	logKeySite   = "site"
	logKeyErr    = "err"
	logKeyProto  = "protocol"
)

// ListenerConfig configures a Listener.
type ListenerConfig struct {
	// Identity is the site's identity. Required.
	Identity *Identity
	// Logger receives refused connections (Warn) and pairings (Info).
	// Nil discards.
	Logger *slog.Logger
	// HandshakeTimeout is DefaultHandshakeTimeout when zero.
	HandshakeTimeout time.Duration
	// PairTimeout bounds a pairing exchange; DefaultPairTimeout when zero.
	PairTimeout time.Duration
	// OnPaired, when set, is called after each successful pairing.
	OnPaired func(PeerInfo)
}

// Listener is the replication listener's TLS layer: it wraps a TCP
// listener, completes each connection's handshake with ServerTLS (in its
// own goroutine, so a slow client holds up no one), serves pairing
// connections itself with PairServer, and hands Accept only replication
// connections from paired sites, as handshaken *Conn (PeerSite names
// the site). Every refusal is logged with the remote address and why.
//
// NewListener starts the accepting goroutine; Close stops it, closes the
// wrapped listener and connections not yet accepted, and waits for the
// handshakes in flight. Accept and Close are safe for concurrent use.
type Listener struct {
	inner net.Listener
	cfg   ListenerConfig
	log   *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	conns  chan *Conn
	wg     sync.WaitGroup
	once   sync.Once
}

var _ net.Listener = (*Listener)(nil)

// NewListener wraps inner; see Listener.
func NewListener(inner net.Listener, cfg ListenerConfig) (*Listener, error) {
	if cfg.Identity == nil {
		return nil, errors.New("pki: listener config: Identity is required")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.PairTimeout <= 0 {
		cfg.PairTimeout = DefaultPairTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{inner: inner, cfg: cfg, log: log, ctx: ctx, cancel: cancel, conns: make(chan *Conn)}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Accept returns the next replication connection from a paired site, its
// handshake complete. After Close it returns net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.ctx.Done():
		return nil, fmt.Errorf("accept replication connection: %w", net.ErrClosed)
	}
}

// Addr is the wrapped listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close stops accepting, closes the wrapped listener and waits for the
// handshakes and pairings in flight to end (they are cut short).
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		l.cancel()
		err = l.inner.Close()
		l.wg.Wait()
	})
	return err
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				l.cancel()
				return
			}
			l.log.Warn("replication listener: accept failed, retrying", logKeyErr, err)
			select {
			case <-time.After(backoff):
			case <-l.ctx.Done():
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		l.wg.Add(1)
		go l.handle(c)
	}
}

// handle completes c's handshake and routes it.
func (l *Listener) handle(c net.Conn) {
	defer l.wg.Done()
	id := l.cfg.Identity
	remote := c.RemoteAddr().String()
	tc := newConn(c, id.ServerTLS(id.Peers()), false)
	hctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		l.log.Warn("replication listener: refused connection", logKeyRemote, remote, logKeyErr, err)
		_ = c.Close()
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol == ALPNPairing {
		defer tc.Close()
		pctx, cancel := context.WithTimeout(l.ctx, l.cfg.PairTimeout)
		defer cancel()
		peer, err := PairServer(pctx, tc.Conn, id, id.Tokens())
		if err != nil {
			l.log.Warn("replication listener: refused pairing", logKeyRemote, remote, logKeyErr, err)
			return
		}
		l.log.Info("replication listener: paired", logKeyRemote, remote, logKeySite, peer.Site, "ca_fingerprint", peer.CAFingerprint)
		if l.cfg.OnPaired != nil {
			l.cfg.OnPaired(peer)
		}
		return
	}
	site, _ := PeerSite(cs)
	l.log.Debug("replication listener: connection", logKeyRemote, remote, logKeySite, site, logKeyProto, cs.NegotiatedProtocol)
	select {
	case l.conns <- tc:
	case <-l.ctx.Done():
		_ = tc.Close()
	}
}

// DialPeer opens a replication connection to the paired site site at the
// address it was paired with (or addr when not empty): TCP, then a TLS
// handshake with ClientTLS(site). The caller closes the connection.
func (id *Identity) DialPeer(ctx context.Context, site, addr string) (*Conn, error) {
	if addr == "" {
		p, err := id.peers.Get(site)
		if err != nil {
			return nil, fmt.Errorf("dial peer: %w", err)
		}
		if p.Address == "" {
			return nil, fmt.Errorf("dial peer %q: no address known (pair from this site, or give one)", site)
		}
		addr = p.Address
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial peer %q at %s: %w", site, addr, err)
	}
	tc := newConn(c, id.ClientTLS(site), true)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("dial peer %q at %s: TLS handshake: %w", site, addr, err)
	}
	return tc, nil
}
