package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// DefaultServerTimeout is how long the Server waits for a frame from the
// primary (which pings an idle link every second) before it drops the
// connection.
const DefaultServerTimeout = 30 * time.Second

// ServerConfig configures a Server.
type ServerConfig struct {
	// Lookup returns the Sink of the replica disk named disk that site
	// replicates here, or an error wrapping ErrUnknownDisk. Required.
	Lookup func(ctx context.Context, site, disk string) (Sink, error)
	// Create, when set, is asked for the Sink when Lookup reports
	// ErrUnknownDisk: the daemon creates the replica of a size-byte disk
	// that a paired site starts protecting. Its ErrUnknownDisk refuses.
	Create func(ctx context.Context, site, disk string, size int64) (Sink, error)
	// Identify names the peer site of a connection accepted by Serve
	// (the daemon completes the TLS handshake and reads the certificate).
	// An error refuses the connection. Nil names every peer "".
	Identify func(ctx context.Context, conn net.Conn) (site string, err error)
	// Policy, when set, is told the policy a primary sends for its disk
	// (protocol version 2, at each connection), before any record.
	Policy func(ctx context.Context, site, disk string, p Policy)
	// Logger receives connections (Info) and refusals (Warn). Nil
	// discards.
	Logger *slog.Logger
	// Timeout is DefaultServerTimeout when zero.
	Timeout time.Duration
}

// Server accepts replication connections on the secondary and routes each
// to the receiver of the disk its handshake names. At most one connection
// drives a disk: a newer one for the same disk closes the older and waits
// for it to end.
type Server struct {
	cfg ServerConfig
	log *slog.Logger

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	active    map[string]*activeConn
	wg        sync.WaitGroup
}

type activeConn struct {
	conn net.Conn
	done chan struct{}
}

// ErrServerClosed is returned by Serve and ServeConn after Shutdown.
var ErrServerClosed = errors.New("replication: server closed")

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Lookup == nil {
		return nil, errors.New("replication: server config: Lookup is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultServerTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Logger, listeners: map[net.Listener]struct{}{},
		conns: map[net.Conn]struct{}{}, active: map[string]*activeConn{}}, nil
}

// Serve accepts connections on ln until ctx ends or Shutdown, serving
// each in its own goroutine. It returns ErrServerClosed after Shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept replication connection: %w", err)
		}
		delay = 0
		// Add under the lock, after checking closed, so that Shutdown's
		// Wait never races a new connection's Add.
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			site := ""
			if s.cfg.Identify != nil {
				hctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
				var err error
				site, err = s.cfg.Identify(hctx, conn)
				cancel()
				if err != nil {
					s.log.Warn("replication: refused connection: peer not identified", logRemote, conn.RemoteAddr().String(), logErr, err)
					conn.Close()
					return
				}
			}
			_ = s.ServeConn(ctx, conn, site)
		}()
	}
}

// ServeConn serves one connection from the named peer site until it ends,
// and closes it. The connection must already be authenticated.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn, site string) error {
	defer conn.Close()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	remote := conn.RemoteAddr().String()
	fr := newFrameReader(conn)
	defer fr.close()
	fw, _ := newFrameWriter(conn, false)
	defer fw.close()
	refuseConn := func(code uint16, disk string, err error) error {
		s.log.Warn("replication: refused connection", logSite, site, logDisk, disk, logRemote, remote, logErr, err)
		sendRefusal(conn, fw, code, err)
		return err
	}

	_ = conn.SetDeadline(time.Now().Add(s.cfg.Timeout))
	f, err := fr.next()
	if err != nil {
		if errors.Is(err, ErrBadFrame) {
			return refuseConn(errCodeProtocol, "", err)
		}
		s.log.Warn("replication: connection closed before hello", logSite, site, logRemote, remote, logErr, err)
		return err
	}
	if f.typ != frameHello {
		return refuseConn(errCodeProtocol, "", fmt.Errorf("%w: %s frame instead of hello", errProtocol, f.typ))
	}
	h, err := decodeHello(f.payload)
	if err != nil {
		return refuseConn(errCodeProtocol, "", err)
	}
	version := min(uint16(ProtocolVersion), h.MaxVersion)
	if version < max(MinProtocolVersion, h.MinVersion) || h.MinVersion > h.MaxVersion {
		return refuseConn(errCodeVersion, h.Disk, fmt.Errorf("replication: no common protocol version: peer speaks %d..%d, we speak %d..%d",
			h.MinVersion, h.MaxVersion, MinProtocolVersion, ProtocolVersion))
	}
	sink, err := s.cfg.Lookup(ctx, site, h.Disk)
	if errors.Is(err, ErrUnknownDisk) && s.cfg.Create != nil {
		sink, err = s.cfg.Create(ctx, site, h.Disk, h.Size)
	}
	if err != nil {
		code := uint16(errCodeSink)
		if errors.Is(err, ErrUnknownDisk) {
			code = errCodeUnknownDisk
		}
		return refuseConn(code, h.Disk, fmt.Errorf("look up disk %q of site %q: %w", h.Disk, site, err))
	}
	if sink.Size() != h.Size {
		return refuseConn(errCodeSize, h.Disk, fmt.Errorf("replication: disk %q is %d bytes here, %d at the primary", h.Disk, sink.Size(), h.Size))
	}
	release, err := s.claim(ctx, site+"\x00"+h.Disk, conn)
	if err != nil {
		return refuseConn(errCodeBusy, h.Disk, err)
	}
	defer release()
	if rc, ok := sink.(Recoverer); ok {
		if err := rc.Recover(ctx); err != nil {
			return refuseConn(errCodeSink, h.Disk, fmt.Errorf("recover replica: %w", err))
		}
	}
	st, err := sink.State(ctx)
	if err != nil {
		return refuseConn(errCodeSink, h.Disk, fmt.Errorf("read replica state: %w", err))
	}
	if _, err := fw.write(frameWelcome, welcomeMsg{Version: version, State: st}.encode()); err != nil {
		return err
	}
	_ = conn.SetDeadline(time.Time{})
	log := s.log.With(logSite, site, logDisk, h.Disk, logRemote, remote)
	log.Info("replication: primary connected", "version", version, "primary_head", h.Head, "head", st.Head.Seq, "consistent", st.Consistent)

	r := &receiver{sink: sink, log: log, conn: conn, fr: fr, fw: fw, timeout: s.cfg.Timeout, st: st}
	if s.cfg.Policy != nil {
		r.policy = func(ctx context.Context, p Policy) { s.cfg.Policy(ctx, site, h.Disk, p) }
	}
	err = r.run(ctx)
	var rf *refusal
	switch {
	case errors.As(err, &rf):
		log.Warn("replication: refused frame, connection dropped, nothing of it applied", logErr, rf.err, "head", r.st.Head.Seq)
		sendRefusal(conn, fw, rf.code, rf.err)
	case ctx.Err() != nil:
	default:
		log.Info("replication: primary disconnected", logErr, err, "head", r.st.Head.Seq)
	}
	return err
}

// refusalLinger bounds how long a refused connection waits for the
// primary to read the error frame and hang up.
const refusalLinger = time.Second

// sendRefusal writes the error frame that tells the primary why its
// connection ends, then closes the sending side and reads (and discards)
// until the primary hangs up or refusalLinger passes. Closing at once
// with the primary's frames unread would send a reset, which can reach
// the primary before it reads the error frame: its operator would see
// "connection reset" instead of the reason.
func sendRefusal(conn net.Conn, fw *frameWriter, code uint16, err error) {
	_ = conn.SetWriteDeadline(time.Now().Add(refusalLinger))
	if _, werr := fw.write(frameError, errorMsg{Code: code, Message: err.Error()}.encode()); werr != nil {
		return
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(refusalLinger))
	_, _ = io.Copy(io.Discard, conn)
}

// claim makes conn the one connection driving key, closing and waiting
// out an older one.
func (s *Server) claim(ctx context.Context, key string, conn net.Conn) (release func(), err error) {
	me := &activeConn{conn: conn, done: make(chan struct{})}
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrServerClosed
		}
		old := s.active[key]
		if old == nil {
			s.active[key] = me
			s.mu.Unlock()
			return func() {
				s.mu.Lock()
				if s.active[key] == me {
					delete(s.active, key)
				}
				s.mu.Unlock()
				close(me.done)
			}, nil
		}
		s.mu.Unlock()
		old.conn.Close()
		select {
		case <-old.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Shutdown stops accepting, closes every connection and waits for their
// goroutines, or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("shut down replication server: %w", ctx.Err())
	}
}
