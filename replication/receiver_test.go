package replication_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replication"
	"github.com/tandem-dr/tandem/replication/replicationtest"
)

// handshake dials the secondary and sends a Hello, returning the
// connection and the answer frame's type and payload.
func handshake(t *testing.T, addr, disk string, size int64, minV, maxV uint16) (net.Conn, func() (uint8, []byte, error), uint8, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(replication.EncodeFrame(replication.FrameHello, replication.EncodeHello(disk, size, minV, maxV), false)); err != nil {
		t.Fatalf("write hello: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	next := replication.FrameReader(c)
	typ, p, err := next()
	if err != nil {
		t.Fatalf("read answer to hello: %v", err)
	}
	return c, next, typ, p
}

func wantErrorFrame(t *testing.T, typ uint8, p []byte, code uint16, text string) {
	t.Helper()
	if typ != replication.FrameError {
		t.Fatalf("answer frame type %d; want an error frame", typ)
	}
	gotCode, msg, err := replication.DecodeErrorFrame(p)
	if err != nil || gotCode != code || !strings.Contains(msg, text) {
		t.Fatalf("error frame code %d %q (%v); want code %d containing %q", gotCode, msg, err, code, text)
	}
}

func TestServerRefusesUnknownDiskAndVersion(t *testing.T) {
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	_, _, typ, p := handshake(t, sec.addr(), "nosuch", diskSize, 1, 1)
	wantErrorFrame(t, typ, p, replication.ErrCodeUnknownDisk, "unknown disk")
	_, _, typ, p = handshake(t, sec.addr(), "vm1", diskSize, 7, 9)
	wantErrorFrame(t, typ, p, replication.ErrCodeVersion, "no common protocol version")
	if logs := sec.logs.String(); !strings.Contains(logs, "refused connection") {
		t.Errorf("no refusal logged:\n%s", logs)
	}

	// The sender reports the refusal.
	src := replicationtest.NewMemSource(diskSize, 0)
	d := newDialer(sec.addr())
	s, _ := startSender(t, src, d.dial, func(c *replication.SenderConfig) { c.Disk = "nosuch" })
	waitLastError(t, s, "unknown disk", 5*time.Second)
}

func TestBadRecordRefusedNothingApplied(t *testing.T) {
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	c, next, typ, _ := handshake(t, sec.addr(), "vm1", diskSize, 1, 1)
	if typ != replication.FrameWelcome {
		t.Fatalf("answer frame type %d; want welcome", typ)
	}
	recs := sealed(3, 4096)
	end := replication.Position{Seq: 3, Sum: recs[2].Sum}
	recs[1].Data[100] ^= 1 // damaged after sealing: the chain check must catch it
	var stream []byte
	stream = append(stream, replication.EncodeFrame(replication.FrameSyncBegin, replication.EncodeSyncBegin(7, true, replication.Position{}, 0), false)...)
	stream = append(stream, replication.EncodeFrame(replication.FrameSyncEnd, replication.EncodeSyncEnd(7, end), false)...)
	stream = append(stream, replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(recs), true)...)
	if _, err := c.Write(stream); err != nil {
		t.Fatalf("write: %v", err)
	}
	var typ2 uint8
	var p []byte
	for {
		var err error
		typ2, p, err = next()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if typ2 != replication.FrameAck {
			break
		}
	}
	wantErrorFrame(t, typ2, p, replication.ErrCodeCorrupt, "seq=2")
	st, _ := sink.State(context.Background())
	if st.Head.Seq != 0 || st.Initialized || len(sink.Records()) != 0 {
		t.Errorf("sink head %d, initialized %v, %d records after a refused batch; want nothing applied", st.Head.Seq, st.Initialized, len(sink.Records()))
	}
	waitLog(t, sec.logs, "refused frame")
}

func waitLog(t *testing.T, l *logBuffer, text string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(l.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("log has no %q:\n%s", text, l.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// garbler flips one bit of the first write, from the at-th on a
// connection, that carries mark (a record's data, sent raw).
type garbler struct {
	net.Conn
	writes atomic.Int64
	done   atomic.Bool
	at     int64
	mark   []byte
}

func (g *garbler) Write(p []byte) (int, error) {
	i := bytes.Index(p, g.mark)
	if g.writes.Add(1) >= g.at && i >= 0 && g.done.CompareAndSwap(false, true) {
		q := append([]byte(nil), p...)
		q[i+3] ^= 0x10
		return g.Conn.Write(q)
	}
	return g.Conn.Write(p)
}

func TestGarbledFrameRefused(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	src.Write(0, []byte("before"))
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	d := newDialer(sec.addr())
	var once sync.Once
	var applied atomic.Int64
	sink.FailAppend = func(recs []journal.Record) error {
		for _, r := range recs {
			if string(r.Data) == "garbled in flight" {
				applied.Add(1)
			}
		}
		return nil
	}
	d.wrap = func(c net.Conn) net.Conn {
		var out net.Conn = c
		once.Do(func() { out = &garbler{Conn: c, at: 7, mark: []byte("garbled in flight")} })
		return out
	}
	s, slog := startSender(t, src, d.dial, func(c *replication.SenderConfig) { c.Compress = replication.CompressNone })
	waitSynced(t, s, src, sink, 10*time.Second)
	for i := 0; i < 20; i++ {
		src.Write(int64(i)*4096, []byte("garbled in flight"))
		time.Sleep(5 * time.Millisecond)
	}
	waitSynced(t, s, src, sink, 10*time.Second)
	waitLog(t, sec.logs, "refused frame")
	if !strings.Contains(sec.logs.String(), "checksum") {
		t.Errorf("refusal does not name the checksum:\n%s", sec.logs.String())
	}
	if !strings.Contains(slog.String(), "refused by peer") {
		t.Errorf("sender log does not show the refusal:\n%s", slog.String())
	}
	if got := applied.Load(); got != 20 {
		t.Errorf("records appended %d times; want each of the 20 exactly once", got)
	}
}

// TestOrderKept writes a chain of dependent writes (write i puts i into
// block i mod N) while the link is cut now and then, and checks at many
// moments that the replica never shows a write without all earlier ones.
func TestOrderKept(t *testing.T) {
	const blocks = 64
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	proxy := replicationtest.NewProxy(t, sec.addr())
	d := newDialer(proxy.Addr())
	s, _ := startSender(t, src, d.dial, nil)
	src.Write(diskSize-4096, []byte("init"))
	waitSynced(t, s, src, sink, 10*time.Second)
	base, _ := src.Head(context.Background())

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(1); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			src.Write(int64(i%blocks)*4096, []byte(fmt.Sprintf("%020d", i)))
			if i%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	checks := 0
	deadline := time.Now().Add(20 * time.Second)
	for (checks < 400 || proxy.Cuts() < 5) && time.Now().Before(deadline) {
		if checks%40 == 39 {
			proxy.Cut()
		}
		img, seq := sink.SnapshotRange(0, blocks*4096)
		checks++
		n := seq - base.Seq // writes of the chain the replica holds
		for b := uint64(0); b < blocks; b++ {
			var want uint64 // the newest i <= n with i%blocks == b
			if n >= b && (b > 0 || n >= blocks) {
				want = n - (n-b)%blocks
			}
			var got uint64
			if raw := img[b*4096 : b*4096+20]; raw[0] != 0 {
				fmt.Sscanf(string(raw), "%d", &got)
			}
			if got != want {
				t.Fatalf("check %d: replica at seq %d (write %d of the chain) shows write %d in block %d; want %d", checks, seq, n, got, b, want)
			}
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 20*time.Second)
	if checks < 400 || proxy.Cuts() < 5 {
		t.Errorf("%d checks across %d cuts; want at least 400 across 5", checks, proxy.Cuts())
	}
}

// TestSinkRefusalReported: a secondary whose replica refuses records (its
// file system is full) tells the primary why, and the primary's status
// keeps saying it across reconnects until records flow again.
func TestSinkRefusalReported(t *testing.T) {
	src, sink, _, d, s := startPair(t, nil)
	src.Write(0, []byte("boot"))
	waitSynced(t, s, src, sink, 10*time.Second)

	var full atomic.Bool
	full.Store(true)
	sink.FailAppend = func([]journal.Record) error {
		if full.Load() {
			time.Sleep(50 * time.Millisecond) // a slow refusal: each connection looks alive a while
			return errors.New("no space left on device")
		}
		return nil
	}
	src.Write(4096, []byte("does not fit"))
	waitLastError(t, s, "no space left", 10*time.Second)
	// Through reconnects (a refusal backs off like a failed dial) the
	// reason stays.
	dials := d.dials.Load()
	for i := 0; d.dials.Load() < dials+2; i++ {
		if i > 1000 {
			t.Fatalf("the primary did not retry: %d dials", d.dials.Load())
		}
		if st := s.Status(context.Background()); !strings.Contains(st.LastError, "no space left") {
			t.Fatalf("sample %d: status %+v; want the refusal's reason until records flow", i, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	full.Store(false)
	waitSynced(t, s, src, sink, 30*time.Second)
	if st := s.Status(context.Background()); st.LastError != "" {
		t.Errorf("caught up, yet status says %q", st.LastError)
	}
}

// TestSinkRecoveredOnConnect: a sink that a failure left unusable is
// recovered by the next connection (Recoverer), before its state is read,
// and replication then goes on; while it cannot recover, the primary is
// told why.
func TestSinkRecoveredOnConnect(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	sink := replicationtest.NewMemSink(diskSize)
	var broken, recoverable atomic.Bool
	var recovered atomic.Int64
	sink.FailAppend = func([]journal.Record) error {
		if broken.Load() {
			return errors.New("store write failed (test)")
		}
		return nil
	}
	sink.OnRecover = func() error {
		if !broken.Load() {
			return nil
		}
		if !recoverable.Load() {
			return errors.New("still failing (test)")
		}
		broken.Store(false)
		recovered.Add(1)
		return nil
	}
	sec := startSecondary(t, "", map[string]*replicationtest.MemSink{"vm1": sink})
	s, _ := startSender(t, src, newDialer(sec.addr()).dial, nil)
	src.Write(0, []byte("boot"))
	waitSynced(t, s, src, sink, 10*time.Second)

	broken.Store(true)
	src.Write(4096, []byte("after the failure"))
	waitLastError(t, s, "still failing", 10*time.Second)
	recoverable.Store(true)
	waitSynced(t, s, src, sink, 30*time.Second)
	if recovered.Load() != 1 {
		t.Errorf("recovered %d times, want once", recovered.Load())
	}
	waitLog(t, sec.logs, "recover replica")
}

// countingListener counts the bytes the server reads from its
// connections.
type countingListener struct {
	net.Listener
	read *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.read}, nil
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// TestGroupCommit: records that arrive while the sink is busy appending
// wait in one group, and the sink appends them with one call (one
// fdatasync for a journal) as soon as it is free: the slower the sink,
// the larger its groups, rather than one append per frame.
func TestGroupCommit(t *testing.T) {
	sink := replicationtest.NewMemSink(diskSize)
	release := make(chan struct{})
	var mu sync.Mutex
	var groups []int
	sink.FailAppend = func(recs []journal.Record) error {
		mu.Lock()
		groups = append(groups, len(recs))
		first := len(groups) == 1
		mu.Unlock()
		if first {
			<-release // the sink is busy with the first group
		}
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var read atomic.Int64
	srv, err := replication.NewServer(replication.ServerConfig{
		Logger: (&logBuffer{}).logger(),
		Lookup: func(context.Context, string, string) (replication.Sink, error) { return sink, nil },
	})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, countingListener{ln, &read}) }()
	t.Cleanup(func() { cancel(); <-done })

	c, next, typ, _ := handshake(t, ln.Addr().String(), "vm1", diskSize, 1, replication.ProtocolVersion)
	if typ != replication.FrameWelcome {
		t.Fatalf("answer frame type %d; want welcome", typ)
	}
	sent := int64(len(replication.EncodeFrame(replication.FrameHello, replication.EncodeHello("vm1", diskSize, 1, replication.ProtocolVersion), false)))
	write := func(b []byte) {
		t.Helper()
		if _, err := c.Write(b); err != nil {
			t.Fatalf("write: %v", err)
		}
		sent += int64(len(b))
	}
	write(replication.EncodeFrame(replication.FrameSyncBegin, replication.EncodeSyncBegin(7, true, replication.Position{}, 0), false))
	write(replication.EncodeFrame(replication.FrameSyncEnd, replication.EncodeSyncEnd(7, replication.Position{}), false))
	recs := sealed(11, 4096)
	write(replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(recs[:1]), false))
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(groups)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first record never reached the sink")
		}
		time.Sleep(time.Millisecond)
	}
	// One frame per record, trickling in while the sink is busy.
	for i := 1; i < len(recs); i++ {
		write(replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(recs[i:i+1]), false))
		time.Sleep(5 * time.Millisecond)
	}
	for read.Load() < sent { // the server has read every frame
		if time.Now().After(deadline) {
			t.Fatalf("the server read %d of the %d bytes sent", read.Load(), sent)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // and decoded them
	close(release)
	for {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, p, err := next()
		if err != nil {
			t.Fatalf("read acknowledgement: %v", err)
		}
		if typ != replication.FrameAck {
			continue
		}
		seq, err := replication.AckedConsistent(p)
		if err != nil {
			t.Fatalf("decode acknowledgement: %v", err)
		}
		if seq == 11 {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(groups) != 2 || groups[1] != 10 {
		t.Errorf("appends of %v records; want [1 10]: the ten records that came while the sink was busy in one group", groups)
	}
}

// deferredSink is a MemSink that acknowledges before it applies
// (replication.DeferredApplier): AppendDurable appends, and Apply reports
// each call to applies, then waits for release when it is set and fails
// with fail when it is set.
type deferredSink struct {
	*replicationtest.MemSink
	applies chan []journal.Record
	release chan struct{}
	fail    error
}

func (s *deferredSink) AppendDurable(ctx context.Context, recs []journal.Record) error {
	return s.AppendReceived(ctx, recs)
}

func (s *deferredSink) Apply(ctx context.Context, recs []journal.Record) error {
	got := make([]journal.Record, len(recs))
	for i, r := range recs {
		got[i] = r
		got[i].Data = bytes.Clone(r.Data) // the receiver reuses the buffers after Apply
	}
	s.applies <- got
	if s.release != nil {
		<-s.release
	}
	return s.fail
}

// TestApplyBesideNextAppend: the receiver acknowledges a group once it is
// appended, while the group before it is still being applied; the groups
// are applied in order, each with its own records intact.
func TestApplyBesideNextAppend(t *testing.T) {
	sink := &deferredSink{MemSink: replicationtest.NewMemSink(diskSize), applies: make(chan []journal.Record, 4), release: make(chan struct{})}
	c, next := serveSynced(t, sink)
	write := func(b []byte) {
		t.Helper()
		if _, err := c.Write(b); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	waitAck := func(seq uint64) {
		t.Helper()
		for {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			typ, p, err := next()
			if err != nil {
				close(sink.release)
				t.Fatalf("no acknowledgement of seq=%d while the group before it is applied: %v", seq, err)
			}
			if typ != replication.FrameAck {
				continue
			}
			if got, err := replication.AckedConsistent(p); err != nil || got >= seq {
				return
			}
		}
	}
	recs := sealed(2, 4096)
	write(replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(recs[:1]), false))
	waitAck(1)
	var applied [][]journal.Record
	select {
	case g := <-sink.applies: // and it waits for release
		applied = append(applied, g)
	case <-time.After(10 * time.Second):
		t.Fatal("the first group was never applied")
	}
	write(replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(recs[1:]), false))
	waitAck(2)
	close(sink.release)
	select {
	case g := <-sink.applies:
		applied = append(applied, g)
	case <-time.After(10 * time.Second):
		t.Fatal("the second group was never applied")
	}
	for i, g := range applied {
		if len(g) != 1 || g[0].Seq != recs[i].Seq || !bytes.Equal(g[0].Data, recs[i].Data) {
			t.Errorf("apply %d got %d records (first seq=%d), want seq=%d with its data", i, len(g), g[0].Seq, recs[i].Seq)
		}
	}
}

// TestApplyFailureRefused: a store that fails to apply an acknowledged
// group ends the connection with a sink error frame that says why.
func TestApplyFailureRefused(t *testing.T) {
	sink := &deferredSink{MemSink: replicationtest.NewMemSink(diskSize), applies: make(chan []journal.Record, 4), fail: errors.New("injected EIO")}
	c, next := serveSynced(t, sink)
	if _, err := c.Write(replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(sealed(1, 4096)), false)); err != nil {
		t.Fatalf("write: %v", err)
	}
	for {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, p, err := next()
		if err != nil {
			t.Fatalf("no error frame after a failed apply: %v", err)
		}
		if typ != replication.FrameAck {
			wantErrorFrame(t, typ, p, replication.ErrCodeSink, "apply received seq=1..1: injected EIO")
			return
		}
	}
}

// serveSynced serves sink on a new server, connects to it and runs an
// empty full sync, so that records frames take the pipelined path. It
// returns the connection and its frame reader.
func serveSynced(t *testing.T, sink replication.Sink) (net.Conn, func() (uint8, []byte, error)) {
	t.Helper()
	srv, err := replication.NewServer(replication.ServerConfig{
		Logger: (&logBuffer{}).logger(),
		Lookup: func(context.Context, string, string) (replication.Sink, error) { return sink, nil },
	})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })

	c, next, typ, _ := handshake(t, ln.Addr().String(), "vm1", diskSize, 1, replication.ProtocolVersion)
	if typ != replication.FrameWelcome {
		t.Fatalf("answer frame type %d; want welcome", typ)
	}
	for _, f := range [][]byte{
		replication.EncodeFrame(replication.FrameSyncBegin, replication.EncodeSyncBegin(7, true, replication.Position{}, 0), false),
		replication.EncodeFrame(replication.FrameSyncEnd, replication.EncodeSyncEnd(7, replication.Position{}), false),
	} {
		if _, err := c.Write(f); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	return c, next
}
