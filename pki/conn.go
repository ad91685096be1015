package pki

import (
	"crypto/tls"
	"net"
	"sync"
)

// coalesceBytes is the most a Conn gathers before it writes to the socket.
const coalesceBytes = 256 << 10

// Conn is a replication connection: TLS 1.3 over TCP, with its writes
// coalesced. crypto/tls hands the socket one write per TLS record (at most
// 16 KiB of data), so a megabyte costs 64 system calls and as many trips
// through the TCP stack; a Conn gathers the records of one Write and
// writes them in pieces of up to coalesceBytes. Reads, deadlines and the
// handshake's own writes are those of the tls.Conn.
type Conn struct {
	*tls.Conn
	out *coalescer
	wmu sync.Mutex // one Write at a time gathers
}

// newConn wraps raw in TLS with cfg, client or server side.
func newConn(raw net.Conn, cfg *tls.Config, client bool) *Conn {
	out := &coalescer{Conn: raw}
	c := &Conn{out: out}
	if client {
		c.Conn = tls.Client(out, cfg)
	} else {
		c.Conn = tls.Server(out, cfg)
	}
	return c
}

// Write encrypts p and writes it, in as few socket writes as
// coalesceBytes allows; it returns once all of it was handed to the
// socket.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.out.gather()
	n, err := c.Conn.Write(p)
	if ferr := c.out.release(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}

// coalescer is the socket under a Conn's TLS: between gather and release
// it keeps what TLS writes and passes it on coalesceBytes at a time;
// otherwise it writes through. TLS may write outside a Conn's Write (an
// alert at Close), so the order of everything is kept under mu.
type coalescer struct {
	net.Conn
	mu        sync.Mutex
	gathering bool
	buf       []byte
}

func (o *coalescer) gather() {
	o.mu.Lock()
	o.gathering = true
	o.mu.Unlock()
}

// Write is called by TLS with one record, or a handshake flight.
func (o *coalescer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.gathering || len(o.buf)+len(p) > coalesceBytes {
		if err := o.flushLocked(); err != nil {
			return 0, err
		}
	}
	if !o.gathering || len(p) >= coalesceBytes {
		return o.Conn.Write(p)
	}
	o.buf = append(o.buf, p...)
	return len(p), nil
}

// release writes what was gathered and stops gathering.
func (o *coalescer) release() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.gathering = false
	return o.flushLocked()
}

func (o *coalescer) flushLocked() error {
	if len(o.buf) == 0 {
		return nil
	}
	_, err := o.Conn.Write(o.buf)
	o.buf = o.buf[:0]
	return err
}
