package pki

import (
	"bytes"
	"errors"
	"net"
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
	o := &coalescer{Conn: raw}
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
