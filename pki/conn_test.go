package pki

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
)

// recordingConn keeps every write it is given.
type recordingConn struct {
	net.Conn
	writes [][]byte
	fail   error
}

func (r *recordingConn) Write(p []byte) (int, error) {
	if r.fail != nil {
		return 0, r.fail
	}
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

// TestCoalescer: while gathering, TLS's record-sized writes reach the
// socket in writes of at most coalesceBytes, in order, and release writes
// the rest; outside, every write goes through at once; a socket error is
// returned, not swallowed.
func TestCoalescer(t *testing.T) {
	raw := &recordingConn{}
	o := newCoalescer(raw)
	if _, err := o.Write([]byte("hello")); err != nil || len(raw.writes) != 1 {
		t.Fatalf("write outside gathering: %v, %d socket writes; want it through at once", err, len(raw.writes))
	}
	raw.writes = nil
	o.gather()
	var want []byte
	for i := range 100 { // 100 records of 16 KiB and a little
		rec := bytes.Repeat([]byte{byte(i)}, 16<<10+29)
		want = append(want, rec...)
		if n, err := o.Write(rec); err != nil || n != len(rec) {
			t.Fatalf("record %d: %d, %v", i, n, err)
		}
	}
	if err := o.release(); err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(raw.writes, nil); !bytes.Equal(got, want) {
		t.Fatalf("the socket got %d bytes, not the %d written in order", len(got), len(want))
	}
	for i, w := range raw.writes {
		if len(w) > coalesceBytes {
			t.Errorf("socket write %d is %d bytes, over %d", i, len(w), coalesceBytes)
		}
	}
	if max := (len(want) + coalesceBytes - 1) / coalesceBytes * 2; len(raw.writes) > max {
		t.Errorf("%d records went out in %d socket writes; want at most %d", 100, len(raw.writes), max)
	}

	raw.fail = errors.New("connection reset")
	o.gather()
	if _, err := o.Write(make([]byte, 100)); err != nil {
		t.Fatalf("gathered write: %v", err)
	}
	if err := o.release(); !errors.Is(err, raw.fail) {
		t.Errorf("release over a failing socket = %v, want its error", err)
	}
}

// streamConn is a socket on which everything sent has arrived: each Read
// takes as much of stream as fits, then err.
type streamConn struct {
	net.Conn
	stream []byte
	err    error
	reads  int
}

func (s *streamConn) Read(p []byte) (int, error) {
	s.reads++
	if len(s.stream) == 0 {
		return 0, s.err
	}
	n := copy(p, s.stream)
	s.stream = s.stream[n:]
	return n, nil
}

// TestCoalescerReads: TLS's record-sized reads take what has arrived in
// socket reads of up to coalesceBytes, in order, and the socket's error
// (a deadline's timeout) comes after the bytes read before it.
func TestCoalescerReads(t *testing.T) {
	want := make([]byte, 100*(16<<10+29))
	for i := range want {
		want[i] = byte(i*7 + i>>16)
	}
	raw := &streamConn{stream: bytes.Clone(want), err: os.ErrDeadlineExceeded}
	o := newCoalescer(raw)
	var got []byte
	rec := make([]byte, 16<<10+29) // about what TLS asks for a record
	for {
		n, err := o.Read(rec)
		got = append(got, rec[:n]...)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read after %d bytes: %v, want the socket's timeout", len(got), err)
			}
			break
		}
		if n == 0 {
			t.Fatal("read of 0 bytes and no error")
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, not the %d that arrived in order", len(got), len(want))
	}
	if max := len(want)/coalesceBytes + 2; raw.reads > max {
		t.Errorf("%d bytes took %d socket reads; want at most %d", len(want), raw.reads, max)
	}
	if _, err := io.ReadFull(o, rec[:1]); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read after the timeout = %v, want it again", err)
	}
}
