package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/nbd"
	"github.com/tandem-dr/tandem/nbd/nbdtest"
)

// countingExporter wraps a SingleExport and counts opens and closes.
type countingExporter struct {
	nbd.SingleExport
	opens, closes atomic.Int64
}

func (e *countingExporter) Open(ctx context.Context, name string) (*nbd.Export, error) {
	exp, err := e.SingleExport.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	e.opens.Add(1)
	exp.Close = func() error { e.closes.Add(1); return nil }
	return exp, nil
}

const testSize = 16 << 20

func newTestServer(t *testing.T, readOnly bool) (*nbdtest.Mem, *countingExporter, *nbdtest.Server) {
	t.Helper()
	mem := nbdtest.NewMem(testSize)
	exp := &countingExporter{SingleExport: nbd.SingleExport{Name: "disk", Description: "test disk", Backend: mem, ReadOnly: readOnly}}
	srv := nbdtest.NewServer(t, exp, nbd.ServerOptions{})
	return mem, exp, srv
}

func dial(t *testing.T, sock, name string) *nbd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, "unix", sock, name, nbd.ClientOptions{})
	if err != nil {
		t.Fatalf("Dial %q: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkWorks proves the server still serves other clients.
func checkWorks(t *testing.T, sock string) {
	t.Helper()
	c := dial(t, sock, "disk")
	p := []byte(fmt.Sprintf("still alive %d", time.Now().UnixNano()))
	if _, err := c.WriteAt(p, 8192); err != nil {
		t.Fatalf("another client's write: %v", err)
	}
	got := make([]byte, len(p))
	if _, err := c.ReadAt(got, 8192); err != nil {
		t.Fatalf("another client's read: %v", err)
	}
	if !bytes.Equal(got, p) {
		t.Fatalf("another client read %q, want %q", got, p)
	}
}

func TestClientRoundTrip(t *testing.T) {
	mem, exp, srv := newTestServer(t, false)
	c := dial(t, srv.Socket, "disk")
	if got, want := c.Size(), int64(testSize); got != want {
		t.Fatalf("Size = %d, want %d", got, want)
	}
	wantFlags := nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendTrim |
		nbd.FlagSendWriteZeroes | nbd.FlagSendFastZero | nbd.FlagCanMultiConn | nbd.FlagSendCache
	if got := c.Flags(); got != wantFlags {
		t.Fatalf("Flags = %#x, want %#x", got, wantFlags)
	}
	p := bytes.Repeat([]byte("tandem!"), 100000) // spans requests of several sizes
	if _, err := c.WriteAt(p, 12345); err != nil {
		t.Fatalf("WriteAt: %v", err)
	}
	got := make([]byte, len(p))
	if _, err := c.ReadAt(got, 12345); err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
	if !bytes.Equal(got, p) {
		t.Fatalf("ReadAt returned different bytes than written")
	}
	if err := c.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if got := mem.Flushes.Load(); got != 1 {
		t.Fatalf("backend flushes = %d, want 1", got)
	}
	if err := c.Zero(12345, 100, nbd.CmdFlagNoHole|nbd.CmdFlagFUA); err != nil {
		t.Fatalf("Zero: %v", err)
	}
	if err := c.Trim(1<<20, 1<<20); err != nil {
		t.Fatalf("Trim: %v", err)
	}
	b := mem.Bytes()
	if !bytes.Equal(b[12345:12445], make([]byte, 100)) || !bytes.Equal(b[12445:12345+len(p)], p[100:]) {
		t.Fatalf("backend after zero does not hold zeroes then the written data")
	}
	if got := mem.Trims.Load(); got != 1 {
		t.Fatalf("backend trims = %d, want 1", got)
	}
	if got := mem.Flushes.Load(); got != 2 {
		t.Fatalf("backend flushes after FUA zero = %d, want 2", got)
	}
	if _, err := c.WriteAtFUA([]byte("fua"), 7); err != nil {
		t.Fatalf("WriteAtFUA: %v", err)
	}
	if got := mem.Flushes.Load(); got != 3 || !bytes.Equal(mem.Bytes()[7:10], []byte("fua")) {
		t.Fatalf("after a FUA write: backend flushes = %d (want 3), data %q", got, mem.Bytes()[7:10])
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for exp.closes.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if o, cl := exp.opens.Load(), exp.closes.Load(); o != 1 || cl != 1 {
		t.Fatalf("opens=%d closes=%d after one connection, want 1 and 1", o, cl)
	}
}

func TestConcurrentClients(t *testing.T) {
	mem, _, srv := newTestServer(t, false)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := nbd.Dial(context.Background(), "unix", srv.Socket, "", nbd.ClientOptions{})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			p := bytes.Repeat([]byte{byte(i + 1)}, 256<<10)
			for k := 0; k < 4; k++ {
				if _, err := c.WriteAt(p, int64(i)*(1<<20)+int64(k)*(256<<10)); err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("client: %v", err)
	}
	b := mem.Bytes()
	for i := 0; i < 8; i++ {
		if !bytes.Equal(b[i<<20:(i+1)<<20], bytes.Repeat([]byte{byte(i + 1)}, 1<<20)) {
			t.Fatalf("region %d not written by its client", i)
		}
	}
}

// TestPipelinedOutOfOrder sends many requests before reading any reply:
// every cookie must come back exactly once with the right data.
func TestPipelinedOutOfOrder(t *testing.T) {
	mem, _, srv := newTestServer(t, false)
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 31)
	}
	mem.WriteAt(data, 0)
	r := dialRaw(t, srv.Socket)
	r.greet(3)
	r.goExport("disk")
	const n = 64
	var reqs []byte
	for i := 0; i < n; i++ {
		reqs = append(reqs, reqBytes(0, 0, uint64(1000+i), uint64(i*4096), 4096)...)
	}
	r.write(reqs)
	seen := map[uint64]bool{}
	for i := 0; i < n; i++ {
		cookie, e := r.simple()
		if e != 0 {
			t.Fatalf("read cookie %d: error %d", cookie, e)
		}
		got := make([]byte, 4096)
		r.read(got)
		k := int(cookie) - 1000
		if k < 0 || k >= n || seen[cookie] {
			t.Fatalf("reply with cookie %d: unexpected or repeated", cookie)
		}
		seen[cookie] = true
		if !bytes.Equal(got, data[k*4096:(k+1)*4096]) {
			t.Fatalf("cookie %d: data of another request", cookie)
		}
	}
}

func TestStructuredReadAndBlockStatus(t *testing.T) {
	mem, _, srv := newTestServer(t, false)
	mem.WriteAt(bytes.Repeat([]byte{9}, 8192), 65536)
	r := dialRaw(t, srv.Socket)
	r.greet(3)
	r.opt(tOptStructured, nil)
	r.expectFinal(tOptStructured, tRepAck)
	r.opt(tOptSetMeta, metaData("disk", "base:allocation", "qemu:dirty-bitmap:x"))
	metas := r.expectFinal(tOptSetMeta, tRepAck)
	if len(metas) != 1 || string(metas[0][4:]) != "base:allocation" {
		t.Fatalf("SET_META_CONTEXT replies %q, want one base:allocation", metas)
	}
	id := binary.BigEndian.Uint32(metas[0])
	_, flags := r.goExport("disk")
	if flags&nbd.FlagSendDF == 0 {
		t.Fatalf("flags %#x lack SEND_DF with structured replies", flags)
	}

	r.write(reqBytes(0, 0, 7, 65536, 8192))
	c := r.chunk()
	if c.typ != 1 || c.flags&1 == 0 || c.cookie != 7 {
		t.Fatalf("read chunk type %d flags %d cookie %d, want OFFSET_DATA, DONE, 7", c.typ, c.flags, c.cookie)
	}
	if off := binary.BigEndian.Uint64(c.payload); off != 65536 || !bytes.Equal(c.payload[8:], bytes.Repeat([]byte{9}, 8192)) {
		t.Fatalf("OFFSET_DATA offset %d or data wrong", off)
	}

	r.write(reqBytes(0, 7, 8, 0, 1<<20))
	c = r.chunk()
	if c.typ != 5 || c.flags&1 == 0 || binary.BigEndian.Uint32(c.payload) != id {
		t.Fatalf("block status chunk type %d flags %d, want BLOCK_STATUS DONE with id %d", c.typ, c.flags, id)
	}
	var got [][2]uint32
	for p := c.payload[4:]; len(p) >= 8; p = p[8:] {
		got = append(got, [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
	}
	want := [][2]uint32{{65536, 3}, {8192, 0}, {1<<20 - 65536 - 8192, 3}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("extents %v, want %v", got, want)
	}
	// REQ_ONE: a single descriptor.
	r.write(reqBytes(8, 7, 9, 0, 1<<20))
	c = r.chunk()
	if len(c.payload) != 12 {
		t.Fatalf("REQ_ONE block status payload %d bytes, want 12", len(c.payload))
	}
	// Errors are structured error chunks.
	r.write(reqBytes(0, 0, 10, testSize, 1))
	c = r.chunk()
	if c.typ != 0x8001 || binary.BigEndian.Uint32(c.payload) != 22 {
		t.Fatalf("read past end: chunk type %#x error %d, want ERROR EINVAL", c.typ, binary.BigEndian.Uint32(c.payload))
	}
	// A write is acknowledged with NBD_REPLY_TYPE_NONE.
	r.write(append(reqBytes(0, 1, 11, 0, 4), "abcd"...))
	if c = r.chunk(); c.typ != 0 || c.flags&1 == 0 {
		t.Fatalf("write reply chunk type %d flags %d, want NONE with DONE", c.typ, c.flags)
	}
}

func TestListAndInfo(t *testing.T) {
	_, exp, srv := newTestServer(t, false)
	r := dialRaw(t, srv.Socket)
	r.greet(1) // fixed newstyle, zeroes wanted
	r.opt(tOptList, nil)
	list := r.expectFinal(tOptList, tRepAck)
	if len(list) != 1 || string(list[0][4:4+binary.BigEndian.Uint32(list[0])]) != "disk" {
		t.Fatalf("LIST = %q, want one export named disk", list)
	}
	r.opt(tOptList, []byte("x"))
	r.expectFinal(tOptList, tErrInvalid)
	r.opt(tOptListMeta, metaData("disk"))
	if metas := r.expectFinal(tOptListMeta, tRepAck); len(metas) != 1 {
		t.Fatalf("LIST_META_CONTEXT with no query: %d contexts, want 1", len(metas))
	}
	r.opt(tOptSetMeta, metaData("disk", "base:allocation"))
	r.expectFinal(tOptSetMeta, tErrInvalid) // before STRUCTURED_REPLY
	r.opt(tOptInfo, goData("disk", 1, 2, 3))
	infos := r.expectFinal(tOptInfo, tRepAck)
	types := map[uint16][]byte{}
	for _, in := range infos {
		types[binary.BigEndian.Uint16(in)] = in[2:]
	}
	if string(types[1]) != "disk" || string(types[2]) != "test disk" {
		t.Fatalf("INFO name %q description %q, want disk and test disk", types[1], types[2])
	}
	if bs := types[3]; len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != 32<<20 {
		t.Fatalf("INFO block size %x, want 1/4096/32MiB", bs)
	}
	if got := exp.opens.Load(); got != 0 {
		t.Fatalf("export opened %d times by INFO/LIST/META, want 0", got)
	}
	r.opt(tOptInfo, goData("nope"))
	r.expectFinal(tOptInfo, tErrUnknown)
	r.opt(99, []byte("whatever"))
	r.expectFinal(99, tErrUnsup)
	r.opt(tOptStartTLS, nil)
	r.expectFinal(tOptStartTLS, tErrPolicy)
	// NBD_OPT_EXPORT_NAME without NO_ZEROES: size, flags, 124 zero bytes.
	r.opt(tOptExportName, []byte("disk"))
	var b [134]byte
	r.read(b[:])
	if size := binary.BigEndian.Uint64(b[:]); size != testSize || !bytes.Equal(b[10:], make([]byte, 124)) {
		t.Fatalf("EXPORT_NAME reply size %d, want %d followed by zeroes", size, testSize)
	}
	r.write(reqBytes(0, 0, 1, 0, 512))
	if cookie, e := r.simple(); cookie != 1 || e != 0 {
		t.Fatalf("read after EXPORT_NAME: cookie %d error %d", cookie, e)
	}
	if got := exp.opens.Load(); got != 1 {
		t.Fatalf("opens after EXPORT_NAME = %d, want 1", got)
	}
}

func TestAbort(t *testing.T) {
	_, exp, srv := newTestServer(t, false)
	r := dialRaw(t, srv.Socket)
	r.greet(3)
	r.opt(tOptAbort, nil)
	r.expectFinal(tOptAbort, tRepAck)
	r.expectClosed()
	if exp.opens.Load() != 0 {
		t.Fatalf("ABORT opened the export")
	}
}

// TestBadHandshake replays malformed handshakes, including the shapes of
// known CVEs of other servers: each ends that connection or gets the named
// error, and another client is served afterwards.
func TestBadHandshake(t *testing.T) {
	huge := func(opt uint32, n uint32) []byte {
		b := []byte("IHAVEOPT")
		b = binary.BigEndian.AppendUint32(b, opt)
		return binary.BigEndian.AppendUint32(b, n)
	}
	nameLen := func(n uint32) []byte { // GO whose name length lies
		b := binary.BigEndian.AppendUint32(nil, n)
		return append(b, "disk\x00\x00"...)
	}
	cases := []struct {
		name  string
		flags uint32
		send  []byte
		opt   uint32
		want  uint32 // final reply; 0: connection closed
	}{
		{"unknown client flags", 0x80, nil, 0, 0},
		{"bad option magic", 3, append([]byte("IHAVEOPX"), 0, 0, 0, 7, 0, 0, 0, 0), 0, 0},
		{"truncated option header", 3, []byte("IHAVE"), 0, 0},
		{"export name length 0xffffffff", 3, huge(tOptExportName, 0xffffffff), 0, 0},
		{"export name past 4096", 3, optBytes(tOptExportName, bytes.Repeat([]byte("a"), 5000)), 0, 0},
		{"option payload of gigabytes", 3, huge(tOptGo, 3<<30), 0, 0},
		{"option just too long", 3, optBytes(tOptGo, make([]byte, 70000)), tOptGo, tErrTooBig},
		{"GO name length 0xffffffff", 3, optBytes(tOptGo, nameLen(0xffffffff)), tOptGo, tErrInvalid},
		{"GO name past 4096", 3, optBytes(tOptGo, goData(string(bytes.Repeat([]byte("a"), 4097)))), tOptGo, tErrInvalid},
		{"GO truncated", 3, optBytes(tOptGo, []byte{0, 0}), tOptGo, tErrInvalid},
		{"GO unknown export", 3, optBytes(tOptGo, goData("nope")), tOptGo, tErrUnknown},
		{"meta query count lies", 3, optBytes(tOptListMeta, append(metaData("disk"), 0)), tOptListMeta, tErrInvalid},
		{"structured reply with data", 3, optBytes(tOptStructured, []byte{1}), tOptStructured, tErrInvalid},
		{"request before GO", 3, reqBytes(0, 0, 1, 0, 512), 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, exp, srv := newTestServer(t, false)
			r := dialRaw(t, srv.Socket)
			r.greet(tc.flags)
			if tc.send != nil {
				r.write(tc.send)
			}
			if tc.name == "truncated option header" {
				r.nc.(*net.UnixConn).CloseWrite() // the stream ends mid-header
			}
			if tc.want == 0 {
				r.expectClosed()
			} else {
				r.expectFinal(tc.opt, tc.want)
				// The connection is still usable.
				r.goExport("disk")
			}
			if tc.want == 0 && exp.opens.Load() != 0 {
				t.Fatalf("export opened by a refused handshake")
			}
			checkWorks(t, srv.Socket)
		})
	}
}

// TestBadRequests checks each malformed request gets the error the
// protocol names, and the connection stays usable.
func TestBadRequests(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			_, _, srv := newTestServer(t, false)
			r := dialRaw(t, srv.Socket)
			r.greet(3)
			if structured {
				r.opt(tOptStructured, nil)
				r.expectFinal(tOptStructured, tRepAck)
			}
			r.goExport("disk")
			errOf := func() (uint64, uint32) {
				if !structured {
					return r.simple()
				}
				c := r.chunk()
				if c.typ == 0 {
					return c.cookie, 0
				}
				if c.typ != 0x8001 || c.flags&1 == 0 {
					t.Fatalf("error chunk type %#x flags %d, want ERROR with DONE", c.typ, c.flags)
				}
				return c.cookie, binary.BigEndian.Uint32(c.payload)
			}
			cases := []struct {
				name string
				req  []byte
				want uint32
			}{
				{"read past end", reqBytes(0, 0, 1, testSize-4096, 8192), 22},
				{"read offset past end", reqBytes(0, 0, 1, 1<<62, 1), 22},
				{"read offset+length overflows", reqBytes(0, 0, 1, 1<<64-1, 2), 22},
				{"read of length 0", reqBytes(0, 0, 1, 0, 0), 22},
				{"read longer than 32 MiB", reqBytes(0, 0, 1, 0, 32<<20+1), 22},
				{"write past end", append(reqBytes(0, 1, 1, testSize-2, 4), "abcd"...), 28},
				{"write of length 0", reqBytes(0, 1, 1, 0, 0), 22},
				{"write longer than 32 MiB", append(reqBytes(0, 1, 1, 0, 32<<20+1), make([]byte, 32<<20+1)...), 22},
				{"trim past end", reqBytes(0, 4, 1, testSize, 4096), 22},
				{"zeroes past end", reqBytes(0, 6, 1, testSize-1, 2), 28},
				{"flush with a length", reqBytes(0, 3, 1, 0, 1), 22},
				{"unknown command", reqBytes(0, 42, 1, 0, 512), 22},
				{"unknown flag", reqBytes(1<<9, 0, 1, 0, 512), 22},
				{"NO_HOLE on read", reqBytes(2, 0, 1, 0, 512), 22},
				{"FAST_ZERO on write", append(reqBytes(16, 1, 1, 0, 1), 'x'), 22},
				{"REQ_ONE on trim", reqBytes(8, 4, 1, 0, 512), 22},
				{"block status without meta context", reqBytes(0, 7, 1, 0, 512), 22},
			}
			if !structured {
				cases = append(cases, struct {
					name string
					req  []byte
					want uint32
				}{"DF without structured replies", reqBytes(4, 0, 1, 0, 512), 22})
			}
			for _, tc := range cases {
				r.write(tc.req)
				cookie, e := errOf()
				if cookie != 1 || e != tc.want {
					t.Errorf("%s: cookie %d error %d, want cookie 1 error %d", tc.name, cookie, e, tc.want)
				}
				// Still in sync: a good read works.
				r.write(reqBytes(0, 0, 2, 0, 16))
				if structured {
					if c := r.chunk(); c.cookie != 2 || c.typ != 1 {
						t.Fatalf("%s: next read got chunk type %d cookie %d", tc.name, c.typ, c.cookie)
					}
				} else {
					if cookie, e := r.simple(); cookie != 2 || e != 0 {
						t.Fatalf("%s: next read got cookie %d error %d", tc.name, cookie, e)
					}
					r.read(make([]byte, 16))
				}
			}
			// Hostile framing ends only this connection.
			r.write(reqBytes(0, 1, 3, 0, 0xffffffff))
			r.expectClosed()
			checkWorks(t, srv.Socket)
			r2 := dialRaw(t, srv.Socket)
			r2.greet(3)
			r2.goExport("disk")
			r2.write([]byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n"))
			r2.expectClosed()
			checkWorks(t, srv.Socket)
		})
	}
}

func TestReadOnly(t *testing.T) {
	mem, _, srv := newTestServer(t, true)
	c := dial(t, srv.Socket, "disk")
	if c.Flags()&nbd.FlagReadOnly == 0 || c.Flags()&(nbd.FlagSendTrim|nbd.FlagSendWriteZeroes) != 0 {
		t.Fatalf("read-only export flags %#x: want READ_ONLY and no TRIM/WRITE_ZEROES", c.Flags())
	}
	if _, err := c.WriteAt([]byte("x"), 0); !errors.Is(err, nbd.EPERM) {
		t.Fatalf("write to read-only export: got %v, want EPERM", err)
	}
	if err := c.Trim(0, 4096); !errors.Is(err, nbd.EPERM) {
		t.Fatalf("trim of read-only export: got %v, want EPERM", err)
	}
	if err := c.Zero(0, 4096, 0); !errors.Is(err, nbd.EPERM) {
		t.Fatalf("zero of read-only export: got %v, want EPERM", err)
	}
	if got := mem.Writes.Load(); got != 0 {
		t.Fatalf("backend writes = %d, want 0", got)
	}
	if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("read of read-only export: %v", err)
	}
}

func TestTLS(t *testing.T) {
	pki := nbdtest.NewPKI(t)
	mem := nbdtest.NewMem(testSize)
	exp := &countingExporter{SingleExport: nbd.SingleExport{Name: "disk", Backend: mem}}
	srv := nbdtest.NewTLSServer(t, exp, nbd.ServerOptions{}, pki.ServerConfig(), nbd.TLSRequired)

	// Plaintext clients are refused every option but STARTTLS and ABORT.
	r := dialRaw(t, srv.Socket)
	r.greet(3)
	for _, opt := range []uint32{tOptGo, tOptInfo} {
		r.opt(opt, goData("disk"))
		r.expectFinal(opt, tErrTLSReqd)
	}
	r.opt(tOptList, nil)
	r.expectFinal(tOptList, tErrTLSReqd)
	r.opt(tOptStructured, nil)
	r.expectFinal(tOptStructured, tErrTLSReqd)
	r.opt(tOptExportName, []byte("disk"))
	r.expectClosed()

	// STARTTLS followed by plaintext in the same packet (CVE-2021-3716
	// shape): the plaintext must never be taken as an option.
	r = dialRaw(t, srv.Socket)
	r.greet(3)
	r.write(append(optBytes(tOptStartTLS, nil), optBytes(tOptGo, goData("disk"))...))
	r.expectFinal(tOptStartTLS, tRepAck)
	r.expectClosed()
	if exp.opens.Load() != 0 {
		t.Fatalf("export opened by plaintext injected after STARTTLS")
	}

	// The right CA: accepted.
	ctx := context.Background()
	c, err := nbd.Dial(ctx, "unix", srv.Socket, "disk", nbd.ClientOptions{TLSConfig: pki.ClientConfig()})
	if err != nil {
		t.Fatalf("Dial with TLS: %v", err)
	}
	defer c.Close()
	if _, err := c.WriteAt([]byte("secret"), 0); err != nil {
		t.Fatalf("write over TLS: %v", err)
	}
	got := make([]byte, 6)
	if _, err := c.ReadAt(got, 0); err != nil || string(got) != "secret" {
		t.Fatalf("read over TLS = %q, %v; want secret", got, err)
	}
	// Plain Dial is refused.
	if _, err := nbd.Dial(ctx, "unix", srv.Socket, "disk", nbd.ClientOptions{}); !errors.Is(err, nbd.ErrOptionRefused) {
		t.Fatalf("plaintext Dial on TLS-required listener: got %v, want ErrOptionRefused", err)
	}
	// A client not trusting the server's CA fails the handshake.
	other := nbdtest.NewPKI(t)
	if _, err := nbd.Dial(ctx, "unix", srv.Socket, "disk", nbd.ClientOptions{TLSConfig: other.ClientConfig()}); err == nil {
		t.Fatalf("Dial trusting another CA succeeded; want a TLS error")
	}
}

// TestHalfOpenFlood fills the server with connections that never speak: new
// clients are refused while it is full and served once the handshake
// timeout has cleared the flood.
func TestHalfOpenFlood(t *testing.T) {
	mem := nbdtest.NewMem(testSize)
	srv := nbdtest.NewServer(t, &nbd.SingleExport{Name: "disk", Backend: mem},
		nbd.ServerOptions{HandshakeTimeout: 500 * time.Millisecond, MaxConns: 64})
	var flood []net.Conn
	for i := 0; i < 200; i++ {
		c, err := net.Dial("unix", srv.Socket)
		if err != nil {
			t.Fatalf("flood dial %d: %v", i, err)
		}
		flood = append(flood, c)
	}
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	// The flood is timed out; the server then serves normally.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := nbd.Dial(ctx, "unix", srv.Socket, "disk", nbd.ClientOptions{})
		cancel()
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server still refusing after the flood timed out: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Every flooding connection has been closed by the server.
	for i, c := range flood {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		for {
			_, err := c.Read(buf)
			if err == nil {
				continue
			}
			if errors.Is(err, net.ErrClosed) || isTimeout(err) {
				t.Fatalf("flood connection %d not closed by the server: %v", i, err)
			}
			break
		}
	}
	checkWorks(t, srv.Socket)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestShutdown checks Shutdown ends idle connections and refuses new ones.
func TestShutdown(t *testing.T) {
	mem := nbdtest.NewMem(testSize)
	srv := nbd.NewServer(&nbd.SingleExport{Backend: mem}, nbd.ServerOptions{})
	ln, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	c, err := nbd.Dial(context.Background(), "unix", ln.Addr().String(), "", nbd.ClientOptions{})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, nbd.ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v, want ErrServerClosed", err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Fatalf("read after Shutdown succeeded; want the connection closed")
	}
}

// TestFirstBurstServedConcurrently: a new connection knows nothing of
// its backend's speed, so the plain writes of its first burst are served
// at once, not queued one after another to the fast worker: a backend
// whose writes each wait (here for all of them to arrive; in sync mode
// for the secondary) would otherwise take the burst's length times as
// long, or, as here, never finish.
func TestFirstBurstServedConcurrently(t *testing.T) {
	const depth = 4
	mem := &barrierMem{Mem: nbdtest.NewMem(testSize), n: depth}
	mem.cond = sync.NewCond(&mem.mu)
	exp := &nbd.SingleExport{Name: "disk", Backend: mem}
	srv := nbdtest.NewServer(t, exp, nbd.ServerOptions{MaxInFlight: 2 * depth})
	r := dialRaw(t, srv.Socket)
	r.greet(3)
	r.goExport("disk")
	var reqs []byte
	for k := range depth {
		reqs = append(reqs, reqBytes(0, 1, uint64(k), uint64(k)*512, 512)...)
		reqs = append(reqs, bytes.Repeat([]byte{byte(k + 1)}, 512)...)
	}
	r.write(reqs)
	for range depth {
		if cookie, e := r.simple(); e != 0 {
			t.Fatalf("write %d: error %d (the server did not serve the first %d writes at once)", cookie, e, depth)
		}
	}
}

// barrierMem is a Mem whose writes wait, inside the backend, until n of
// them are waiting at once; it records the most ever in flight. Writes of
// a released round that have not yet returned count in flight but not as
// waiting, so the next round waits for n writes of its own.
type barrierMem struct {
	*nbdtest.Mem
	n                int
	mu               sync.Mutex
	cond             *sync.Cond
	in, max, waiting int
	round            int
}

func (m *barrierMem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	m.in++
	m.max = max(m.max, m.in)
	round := m.round
	if m.waiting++; m.waiting == m.n {
		m.waiting = 0
		m.round++
		m.cond.Broadcast()
	}
	deadline := time.AfterFunc(10*time.Second, func() { m.mu.Lock(); m.cond.Broadcast(); m.mu.Unlock() })
	start := time.Now()
	for m.round == round && time.Since(start) < 10*time.Second {
		m.cond.Wait()
	}
	deadline.Stop()
	released := m.round != round
	if !released {
		m.waiting--
	}
	m.in--
	m.mu.Unlock()
	if !released {
		return 0, errors.New("barrier: the other writes never came")
	}
	return m.Mem.WriteAt(p, off)
}

// TestSlowRequestsServedConcurrently: requests on the slow path (FUA
// writes) are served MaxInFlight at once and no more, round after round
// by the same pool of workers, each with its own data.
func TestSlowRequestsServedConcurrently(t *testing.T) {
	const depth = 4
	mem := &barrierMem{Mem: nbdtest.NewMem(testSize), n: depth}
	mem.cond = sync.NewCond(&mem.mu)
	exp := &nbd.SingleExport{Name: "disk", Backend: mem}
	srv := nbdtest.NewServer(t, exp, nbd.ServerOptions{MaxInFlight: depth})
	r := dialRaw(t, srv.Socket)
	r.greet(3)
	r.goExport("disk")
	for round := range 3 {
		var reqs []byte
		for i := range 2 * depth {
			k := round*2*depth + i
			reqs = append(reqs, reqBytes(nbd.CmdFlagFUA, 1, uint64(k), uint64(k)*512, 512)...)
			reqs = append(reqs, bytes.Repeat([]byte{byte(k + 1)}, 512)...)
		}
		r.write(reqs)
		for range 2 * depth {
			if cookie, e := r.simple(); e != 0 {
				t.Fatalf("round %d: FUA write %d: error %d (the server did not serve %d at once)", round, cookie, e, depth)
			}
		}
	}
	mem.mu.Lock()
	most := mem.max
	mem.mu.Unlock()
	if most != depth {
		t.Errorf("at most %d writes in flight, want %d (MaxInFlight)", most, depth)
	}
	for k := range 3 * 2 * depth {
		got := mem.Bytes()[k*512 : (k+1)*512]
		if !bytes.Equal(got, bytes.Repeat([]byte{byte(k + 1)}, 512)) {
			t.Fatalf("block %d holds %d, want %d", k, got[0], k+1)
		}
	}
}
