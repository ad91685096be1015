package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/nbd"
	"github.com/tandem-dr/tandem/nbd/nbdtest"
)

// scriptConn is a net.Conn that reads a fixed script and discards writes.
type scriptConn struct {
	r       *bytes.Reader
	written int
}

func (c *scriptConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)        { c.written += len(p); return len(p), nil }
func (c *scriptConn) Close() error                       { return nil }
func (c *scriptConn) LocalAddr() net.Addr                { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *scriptConn) RemoteAddr() net.Addr               { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *scriptConn) SetDeadline(t time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(t time.Time) error { return nil }

// handshakeSeeds are whole client streams: handshakes and requests.
func handshakeSeeds() [][]byte {
	flags := []byte{0, 0, 0, 3}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	goDisk := optBytes(tOptGo, goData("disk", 3))
	return [][]byte{
		cat(flags, goDisk, reqBytes(0, 0, 1, 0, 512), append(reqBytes(1, 1, 2, 0, 4), "abcd"...), reqBytes(0, 3, 3, 0, 0), reqBytes(0, 2, 4, 0, 0)),
		cat(flags, optBytes(tOptStructured, nil), optBytes(tOptSetMeta, metaData("disk", "base:allocation")), goDisk,
			reqBytes(0, 7, 1, 0, 1<<20), reqBytes(8, 7, 2, 0, 4096), reqBytes(4, 0, 3, 0, 4096), reqBytes(0, 6, 4, 0, 8192), reqBytes(0, 4, 5, 4096, 4096)),
		cat(flags, optBytes(tOptList, nil), optBytes(tOptInfo, goData("", 1, 2, 3)), optBytes(tOptListMeta, metaData("disk", "base:")), optBytes(tOptExportName, []byte("disk")), reqBytes(0, 5, 1, 0, 65536)),
		cat(flags, optBytes(tOptStartTLS, nil), optBytes(tOptAbort, nil)),
		cat(flags, optBytes(tOptGo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0})),
		cat(flags, optBytes(99, make([]byte, 100)), goDisk, reqBytes(0, 0, 1, 1<<40, 0xffffffff)),
		cat([]byte{0, 0, 0, 1}, []byte("IHAVEOPT"), []byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff}),
	}
}

// FuzzServerConn feeds arbitrary client bytes to a server connection over
// a fixed in-memory backend: it must never panic or hang, and a stream
// that ends must end the connection.
func FuzzServerConn(f *testing.F) {
	for _, s := range handshakeSeeds() {
		f.Add(s)
	}
	mem := nbdtest.NewMem(1 << 20)
	srv := nbd.NewServer(&nbd.SingleExport{Name: "disk", Backend: mem}, nbd.ServerOptions{})
	f.Fuzz(func(t *testing.T, script []byte) {
		c := &scriptConn{r: bytes.NewReader(script)}
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(context.Background(), c) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("ServeConn did not return after its input ended")
		}
		if c.written < 18 {
			t.Fatalf("server wrote %d bytes, want at least the 18-byte greeting", c.written)
		}
	})
}

// FuzzRequest checks the request parser: it accepts exactly the headers with
// the request magic, and what it accepts encodes back to the same bytes.
func FuzzRequest(f *testing.F) {
	f.Add(reqBytes(0, 0, 1, 0, 512))
	f.Add(reqBytes(0xffff, 0xffff, 1<<64-1, 1<<64-1, 0xffffffff))
	f.Add(make([]byte, 28))
	f.Add([]byte{0x25, 0x60, 0x95})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r nbd.Request
		err := r.UnmarshalBinary(b)
		valid := len(b) == nbd.RequestSize && binary.BigEndian.Uint32(b) == 0x25609513
		if valid != (err == nil) {
			t.Fatalf("UnmarshalBinary(%x) error %v, want valid=%v", b, err, valid)
		}
		if len(b) == nbd.RequestSize && !valid && !errors.Is(err, nbd.ErrBadMagic) {
			t.Fatalf("bad magic: error %v, want ErrBadMagic", err)
		}
		if err != nil {
			return
		}
		out, _ := r.AppendBinary(nil)
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip %x, want %x", out, b)
		}
	})
}
