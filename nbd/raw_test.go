package nbd_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// Wire values written out independently of the package, so a wrong constant
// in the server cannot hide behind the same wrong constant in the test.
const (
	tOptExportName = 1
	tOptAbort      = 2
	tOptList       = 3
	tOptStartTLS   = 5
	tOptInfo       = 6
	tOptGo         = 7
	tOptStructured = 8
	tOptListMeta   = 9
	tOptSetMeta    = 10

	tRepAck      = 1
	tRepServer   = 2
	tRepInfo     = 3
	tRepMeta     = 4
	tErrUnsup    = 0x80000001
	tErrPolicy   = 0x80000002
	tErrInvalid  = 0x80000003
	tErrTLSReqd  = 0x80000005
	tErrUnknown  = 0x80000006
	tErrShutdown = 0x80000007
	tErrTooBig   = 0x80000009
)

// raw is a hand-driven NBD client connection for protocol tests.
type raw struct {
	t  *testing.T
	nc net.Conn
}

func dialRaw(t *testing.T, sock string) *raw {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &raw{t: t, nc: nc}
}

// greet reads the server greeting and sends client flags.
func (r *raw) greet(clientFlags uint32) {
	r.t.Helper()
	var g [18]byte
	r.read(g[:])
	if got := string(g[:8]); got != "NBDMAGIC" {
		r.t.Fatalf("greeting magic %q, want NBDMAGIC", got)
	}
	if got := string(g[8:16]); got != "IHAVEOPT" {
		r.t.Fatalf("greeting second magic %q, want IHAVEOPT", got)
	}
	if got := binary.BigEndian.Uint16(g[16:]); got != 3 {
		r.t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES (3)", got)
	}
	r.write(binary.BigEndian.AppendUint32(nil, clientFlags))
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *raw) read(b []byte) {
	r.t.Helper()
	if _, err := io.ReadFull(r.nc, b); err != nil {
		r.t.Fatalf("read %d bytes: %v", len(b), err)
	}
}

func optBytes(opt uint32, data []byte) []byte {
	b := []byte("IHAVEOPT")
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func (r *raw) opt(opt uint32, data []byte) { r.t.Helper(); r.write(optBytes(opt, data)) }

// reply reads one option reply and checks it answers opt.
func (r *raw) reply(opt uint32) (uint32, []byte) {
	r.t.Helper()
	var h [20]byte
	r.read(h[:])
	if got := binary.BigEndian.Uint64(h[:]); got != 0x3e889045565a9 {
		r.t.Fatalf("option reply magic %#x, want 0x3e889045565a9", got)
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		r.t.Fatalf("reply to option %d, want %d", got, opt)
	}
	data := make([]byte, binary.BigEndian.Uint32(h[16:]))
	r.read(data)
	return binary.BigEndian.Uint32(h[12:]), data
}

// expectReply reads replies until a final one and checks its type.
func (r *raw) expectFinal(opt, want uint32) [][]byte {
	r.t.Helper()
	var infos [][]byte
	for {
		typ, data := r.reply(opt)
		if typ == tRepInfo || typ == tRepServer || typ == tRepMeta {
			infos = append(infos, data)
			continue
		}
		if typ != want {
			r.t.Fatalf("option %d final reply %#x (%q), want %#x", opt, typ, data, want)
		}
		return infos
	}
}

// expectClosed checks the server ends the connection without sending more.
func (r *raw) expectClosed() {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	n, err := r.nc.Read(b[:])
	if n != 0 || err == nil {
		r.t.Fatalf("connection still open: read %d bytes, err %v; want it closed", n, err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		r.t.Fatalf("connection still open after 10s; want it closed")
	}
}

func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// goExport completes the handshake with NBD_OPT_GO and returns the export
// size and transmission flags.
func (r *raw) goExport(name string) (uint64, uint16) {
	r.t.Helper()
	r.opt(tOptGo, goData(name))
	infos := r.expectFinal(tOptGo, tRepAck)
	for _, in := range infos {
		if binary.BigEndian.Uint16(in) == 0 && len(in) == 12 {
			return binary.BigEndian.Uint64(in[2:]), binary.BigEndian.Uint16(in[10:])
		}
	}
	r.t.Fatalf("NBD_OPT_GO without NBD_INFO_EXPORT")
	return 0, 0
}

func reqBytes(flags, typ uint16, cookie, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// simple reads a simple reply and returns its cookie and error.
func (r *raw) simple() (uint64, uint32) {
	r.t.Helper()
	var h [16]byte
	r.read(h[:])
	if got := binary.BigEndian.Uint32(h[:]); got != 0x67446698 {
		r.t.Fatalf("simple reply magic %#x, want 0x67446698", got)
	}
	return binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[4:])
}

// chunk is one structured reply chunk.
type chunk struct {
	flags, typ uint16
	cookie     uint64
	payload    []byte
}

func (r *raw) chunk() chunk {
	r.t.Helper()
	var h [20]byte
	r.read(h[:])
	if got := binary.BigEndian.Uint32(h[:]); got != 0x668e33ef {
		r.t.Fatalf("structured reply magic %#x, want 0x668e33ef", got)
	}
	c := chunk{flags: binary.BigEndian.Uint16(h[4:]), typ: binary.BigEndian.Uint16(h[6:]), cookie: binary.BigEndian.Uint64(h[8:])}
	c.payload = make([]byte, binary.BigEndian.Uint32(h[16:]))
	r.read(c.payload)
	return c
}
