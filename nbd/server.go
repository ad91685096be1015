package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Sentinel errors of the server.
var (
	// ErrServerClosed is returned by Serve after Shutdown.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrUnknownExport is wrapped by Exporter implementations for a name
	// they do not serve; clients see NBD_REP_ERR_UNKNOWN.
	ErrUnknownExport = errors.New("nbd: unknown export")
)

// Defaults for ServerOptions fields left at zero.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxConns         = 1024
	DefaultMaxInFlight      = 32
)

// Log attribute keys.
const (
	logKeyRemote = "remote"
	logKeyExport = "export"
	logKeyErr    = "err"
)

// TLSMode says whether a listener offers NBD_OPT_STARTTLS and whether
// clients must use it.
type TLSMode int

// The TLS modes of a listener.
const (
	// TLSOff: no STARTTLS; the option is answered NBD_REP_ERR_POLICY.
	TLSOff TLSMode = iota
	// TLSOptional: STARTTLS is offered; plaintext clients are served too.
	TLSOptional
	// TLSRequired: every option but STARTTLS and ABORT is refused with
	// NBD_REP_ERR_TLS_REQD until the client has upgraded.
	TLSRequired
)

// ServerOptions configures a Server. Zero fields take the Default* values.
type ServerOptions struct {
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
	// HandshakeTimeout bounds the whole option haggling of one
	// connection, so half-open connections cannot pile up.
	HandshakeTimeout time.Duration
	// MaxConns bounds the connections served at once (in handshake or
	// transmission); further connections are closed on accept.
	MaxConns int
	// MaxInFlight bounds the requests of one connection served
	// concurrently; the server stops reading requests from that
	// connection while the bound is reached.
	MaxInFlight int
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	return o
}

// Server serves the exports of an Exporter over any number of listeners.
// Each listener has its own TLS settings. A Server is safe for concurrent
// use; Shutdown stops every listener and connection.
type Server struct {
	exp  Exporter
	opts ServerOptions
	log  *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    bool
	done      chan struct{}
	wg        sync.WaitGroup
}

// NewServer returns a server for the exports of exp.
func NewServer(exp Exporter, opts ServerOptions) *Server {
	opts = opts.withDefaults()
	return &Server{
		exp:       exp,
		opts:      opts,
		log:       opts.Logger,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		done:      make(chan struct{}),
	}
}

// Serve accepts plaintext connections on ln until ctx is done or Shutdown
// is called. It closes ln before returning.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.ServeTLS(ctx, ln, nil, TLSOff)
}

// ServeTLS accepts connections on ln that may (TLSOptional) or must
// (TLSRequired) upgrade with NBD_OPT_STARTTLS using cfg. With TLSOff cfg is
// ignored. It returns ErrServerClosed after Shutdown, ctx.Err() when ctx is
// done (connections of ln are then ended), or the accept error.
func (s *Server) ServeTLS(ctx context.Context, ln net.Listener, cfg *tls.Config, mode TLSMode) error {
	if mode != TLSOff && cfg == nil {
		return fmt.Errorf("serve nbd on %s: TLS mode %d without a TLS config", ln.Addr(), mode)
	}
	if mode == TLSOff {
		cfg = nil
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return ErrServerClosed
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd accept", logKeyErr, err)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
				continue
			}
			return fmt.Errorf("accept nbd on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		c := s.newConn(nc, cfg, mode)
		if c == nil {
			nc.Close()
			continue
		}
		go func() {
			defer s.wg.Done()
			defer s.dropConn(c)
			c.serve(ctx)
		}()
	}
}

// ServeConn serves one plaintext connection and returns when it ends. The
// connection counts against MaxConns and is ended by Shutdown.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	c := s.newConn(nc, nil, TLSOff)
	if c == nil {
		nc.Close()
		return ErrServerClosed
	}
	defer s.wg.Done()
	defer s.dropConn(c)
	return c.serve(ctx)
}

// newConn registers a connection, or returns nil when the server is closed
// or full.
func (s *Server) newConn(nc net.Conn, cfg *tls.Config, mode TLSMode) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if len(s.conns) >= s.opts.MaxConns {
		s.log.Warn("nbd connection refused: too many connections", logKeyRemote, nc.RemoteAddr().String())
		return nil
	}
	c := &conn{srv: s, raw: nc, nc: nc, tlsCfg: cfg, tlsMode: mode}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return c
}

func (s *Server) dropConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Shutdown stops accepting, ends connections still in the handshake, lets
// each transmitting connection finish the requests it has read (their
// replies are sent) and then closes it. When ctx ends first, the remaining
// connections are closed at once and ctx.Err() is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()

	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.raw.Close()
		}
		s.mu.Unlock()
		<-waited
		return ctx.Err()
	}
}
