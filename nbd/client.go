package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// ErrOptionRefused is wrapped by Dial when the server refuses an option;
// the error's text names the reply.
var ErrOptionRefused = errors.New("nbd: option refused by server")

// ClientOptions configures Dial.
type ClientOptions struct {
	// TLSConfig, when set, makes the client upgrade with NBD_OPT_STARTTLS
	// before asking for the export.
	TLSConfig *tls.Config
}

// Client is a minimal NBD client: fixed newstyle with NBD_OPT_GO and simple
// replies, one request at a time. It serves tests and hands a negotiated
// connection to the kernel's NBD driver. Its methods are safe for concurrent
// use; requests are serialised.
type Client struct {
	mu     sync.Mutex
	nc     net.Conn
	size   int64
	flags  uint16
	cookie uint64
	hdr    []byte
}

// Dial connects to addr, negotiates export and returns a client in the
// transmission phase.
func Dial(ctx context.Context, network, addr, export string, opts ClientOptions) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial nbd %s %s: %w", network, addr, err)
	}
	c, err := NewClient(ctx, nc, export, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// NewClient negotiates export on an established connection.
func NewClient(ctx context.Context, nc net.Conn, export string, opts ClientOptions) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
		defer nc.SetDeadline(noDeadline)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(pastDeadline) })
	defer stop()
	c := &Client{nc: nc}
	var greet [18]byte
	if _, err := io.ReadFull(nc, greet[:]); err != nil {
		return nil, fmt.Errorf("nbd handshake: read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:]) != magicNBD || binary.BigEndian.Uint64(greet[8:]) != magicOpt {
		return nil, fmt.Errorf("nbd handshake: not a newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(greet[16:])
	if sflags&flagFixedNewstyle == 0 {
		return nil, fmt.Errorf("nbd handshake: server lacks fixed newstyle")
	}
	cflags := uint32(flagFixedNewstyle)
	if sflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
	}
	if err := binary.Write(nc, binary.BigEndian, cflags); err != nil {
		return nil, fmt.Errorf("nbd handshake: send flags: %w", err)
	}
	if opts.TLSConfig != nil {
		if err := c.sendOpt(optStartTLS, nil); err != nil {
			return nil, err
		}
		typ, _, err := c.readOptReply(optStartTLS)
		if err != nil {
			return nil, err
		}
		if typ != repAck {
			return nil, fmt.Errorf("nbd STARTTLS: reply %#x: %w", typ, ErrOptionRefused)
		}
		tc := tls.Client(nc, opts.TLSConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("nbd STARTTLS: %w", err)
		}
		c.nc = tc
	}
	if len(export) > MaxNameLength {
		return nil, fmt.Errorf("nbd handshake: export name of %d bytes", len(export))
	}
	p := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	p = append(p, export...)
	p = binary.BigEndian.AppendUint16(p, 1)
	p = binary.BigEndian.AppendUint16(p, infoBlockSize)
	if err := c.sendOpt(optGo, p); err != nil {
		return nil, err
	}
	gotExport := false
	for {
		typ, data, err := c.readOptReply(optGo)
		if err != nil {
			return nil, err
		}
		switch typ {
		case repAck:
			if !gotExport {
				return nil, fmt.Errorf("nbd NBD_OPT_GO: no export information")
			}
			return c, nil
		case repInfo:
			if len(data) >= 12 && binary.BigEndian.Uint16(data) == infoExport {
				c.size = int64(binary.BigEndian.Uint64(data[2:]))
				c.flags = binary.BigEndian.Uint16(data[10:])
				gotExport = true
			}
		default:
			if typ&(1<<31) != 0 {
				return nil, fmt.Errorf("nbd NBD_OPT_GO %q: reply %#x %q: %w", export, typ, data, ErrOptionRefused)
			}
			return nil, fmt.Errorf("nbd NBD_OPT_GO: unexpected reply %#x", typ)
		}
	}
}

func (c *Client) sendOpt(opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("nbd send option %d: %w", opt, err)
	}
	return nil
}

func (c *Client) readOptReply(opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.nc, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd read reply to option %d: %w", opt, err)
	}
	if binary.BigEndian.Uint64(h[0:]) != magicOptReply || binary.BigEndian.Uint32(h[8:]) != opt {
		return 0, nil, fmt.Errorf("nbd read reply to option %d: bad reply header", opt)
	}
	n := binary.BigEndian.Uint32(h[16:])
	if n > MaxOptionLength {
		return 0, nil, fmt.Errorf("nbd read reply to option %d: %d bytes", opt, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(c.nc, data); err != nil {
		return 0, nil, fmt.Errorf("nbd read reply to option %d: %w", opt, err)
	}
	return binary.BigEndian.Uint32(h[12:]), data, nil
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// Flags are the transmission flags the server sent.
func (c *Client) Flags() uint16 { return c.flags }

// Conn is the connection after the handshake, to hand to the kernel
// (NBD_SET_SOCK). Do not use the Client's methods once it is handed over.
func (c *Client) Conn() net.Conn { return c.nc }

// do sends one request and reads its simple reply into rd.
func (c *Client) do(typ, flags uint16, off int64, length uint32, wr, rd []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cookie++
	req := Request{Flags: flags, Type: typ, Cookie: c.cookie, Offset: uint64(off), Length: length}
	b, _ := req.AppendBinary(c.hdr[:0])
	c.hdr = b
	bufs := net.Buffers{b}
	if len(wr) > 0 {
		bufs = append(bufs, wr)
	}
	if _, err := bufs.WriteTo(c.nc); err != nil {
		return fmt.Errorf("nbd send command %d: %w", typ, err)
	}
	var rh [16]byte
	if _, err := io.ReadFull(c.nc, rh[:]); err != nil {
		return fmt.Errorf("nbd read reply to command %d: %w", typ, err)
	}
	if binary.BigEndian.Uint32(rh[0:]) != magicSimple || binary.BigEndian.Uint64(rh[8:]) != c.cookie {
		return fmt.Errorf("nbd read reply to command %d: bad reply header", typ)
	}
	if e := binary.BigEndian.Uint32(rh[4:]); e != 0 {
		return Errno(e)
	}
	if len(rd) > 0 {
		if _, err := io.ReadFull(c.nc, rd); err != nil {
			return fmt.Errorf("nbd read data of command %d: %w", typ, err)
		}
	}
	return nil
}

// ReadAt reads len(p) bytes at off, in requests of at most MaxPayload.
// Errors from the server are of type Errno.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, MaxPayload)
		if err := c.do(CmdRead, 0, off+int64(done), uint32(n), nil, p[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// WriteAt writes p at off, in requests of at most MaxPayload.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	return c.write(p, off, 0)
}

// WriteAtFUA is WriteAt with the FUA flag: each request returns once its
// data is durable.
func (c *Client) WriteAtFUA(p []byte, off int64) (int, error) {
	return c.write(p, off, CmdFlagFUA)
}

func (c *Client) write(p []byte, off int64, flags uint16) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, MaxPayload)
		if err := c.do(CmdWrite, flags, off+int64(done), uint32(n), p[done:done+n], nil); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// Flush asks the server to make completed writes durable.
func (c *Client) Flush(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(pastDeadline) })
	defer stop()
	return c.do(CmdFlush, 0, 0, 0, nil, nil)
}

// Trim discards the range.
func (c *Client) Trim(off int64, length uint32) error {
	return c.do(CmdTrim, 0, off, length, nil, nil)
}

// Zero writes zeroes to the range; flags are command flags (CmdFlagNoHole,
// CmdFlagFastZero, CmdFlagFUA).
func (c *Client) Zero(off int64, length uint32, flags uint16) error {
	return c.do(CmdWriteZeroes, flags, off, length, nil, nil)
}

// Close sends NBD_CMD_DISC and closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	req := Request{Type: CmdDisc, Cookie: c.cookie + 1}
	b, _ := req.AppendBinary(nil)
	c.nc.Write(b)
	if err := c.nc.Close(); err != nil {
		return fmt.Errorf("nbd close: %w", err)
	}
	return nil
}
