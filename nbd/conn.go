package nbd

import (
	"context"
	"crypto/tls"
	"net"
	"time"
)

// conn is one client connection.
type conn struct {
	srv     *Server
	raw     net.Conn // the accepted connection
	tlsCfg  *tls.Config
	tlsMode TLSMode

	nc       net.Conn // raw, or the TLS session over it
	stopping bool     // guarded by srv.mu
}

func (c *conn) setConn(nc net.Conn) {
	c.srv.mu.Lock()
	c.nc = nc
	c.srv.mu.Unlock()
}

// stop asks the connection to end: a blocked read returns at once.
// Called with srv.mu held.
func (c *conn) stop() {
	c.stopping = true
	c.raw.SetReadDeadline(time.Now())
}

// serve runs the handshake and the transmission phase of the connection.
func (c *conn) serve(ctx context.Context) error {
	defer c.raw.Close()
	remote := addrString(c.raw.RemoteAddr())
	log := c.srv.log.With(logKeyRemote, remote)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopOnCancel := context.AfterFunc(ctx, func() { c.raw.SetDeadline(time.Now()) })
	defer stopOnCancel()

	c.raw.SetDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout))
	sess, err := c.negotiate(ctx)
	if err != nil {
		log.Debug("nbd handshake ended", logKeyErr, err)
		return err
	}
	defer sess.close()
	c.srv.mu.Lock()
	if c.stopping || ctx.Err() != nil {
		c.srv.mu.Unlock()
		return ErrServerClosed
	}
	c.raw.SetDeadline(time.Time{})
	c.srv.mu.Unlock()
	log.Debug("nbd transmission", logKeyExport, sess.exp.Name)
	err = c.transmit(ctx, sess)
	if err != nil {
		log.Debug("nbd connection ended", logKeyErr, err)
	}
	return err
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
