// Package nbdtest provides helpers for testing code that serves or uses NBD:
// an in-memory backend with every optional capability, and a server on a
// unix socket torn down by t.Cleanup, in the manner of net/http/httptest.
//
// Mem is safe for concurrent use.
package nbdtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/nbd"
)

// Mem is an in-memory backend. Blocks of BlockSize never written (or
// trimmed) are holes. It counts calls so tests can assert on them.
type Mem struct {
	mu     sync.RWMutex
	data   []byte
	filled []bool // per block: holds data

	Flushes atomic.Int64
	Trims   atomic.Int64
	Zeroes  atomic.Int64
	Writes  atomic.Int64
}

// BlockSize is the allocation unit of Mem's extent map.
const BlockSize = 4096

var (
	_ nbd.Backend     = (*Mem)(nil)
	_ nbd.Flusher     = (*Mem)(nil)
	_ nbd.Trimmer     = (*Mem)(nil)
	_ nbd.Zeroer      = (*Mem)(nil)
	_ nbd.Extenter    = (*Mem)(nil)
	_ nbd.MultiConner = (*Mem)(nil)
)

// NewMem returns a zeroed backend of size bytes (a multiple of BlockSize).
func NewMem(size int64) *Mem {
	return &Mem{data: make([]byte, size), filled: make([]bool, (size+BlockSize-1)/BlockSize)}
}

// Size is the backend's size.
func (m *Mem) Size() int64 { return int64(len(m.data)) }

// ReadAt copies from the backend.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("mem read off=%d len=%d: out of range", off, len(p))
	}
	return copy(p, m.data[off:]), nil
}

// WriteAt copies p into the backend and marks its blocks as data.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("mem write off=%d len=%d: out of range", off, len(p))
	}
	m.Writes.Add(1)
	for b := off / BlockSize; b*BlockSize < off+int64(len(p)); b++ {
		m.filled[b] = true
	}
	return copy(m.data[off:], p), nil
}

// Flush counts the call.
func (m *Mem) Flush(ctx context.Context) error {
	m.Flushes.Add(1)
	return ctx.Err()
}

// Trim zeroes the range and makes its whole blocks holes.
func (m *Mem) Trim(off, length int64) error {
	m.Trims.Add(1)
	m.zero(off, length, true)
	return nil
}

// Zero zeroes the range; with mayTrim its whole blocks become holes.
func (m *Mem) Zero(off, length int64, mayTrim bool) error {
	m.Zeroes.Add(1)
	m.zero(off, length, mayTrim)
	return nil
}

func (m *Mem) zero(off, length int64, hole bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	if hole {
		for b := (off + BlockSize - 1) / BlockSize; (b+1)*BlockSize <= off+length; b++ {
			m.filled[b] = false
		}
	}
}

// Extents reports runs of data and holes by block.
func (m *Mem) Extents(off, length int64) ([]nbd.Extent, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []nbd.Extent
	end := off + length
	for pos := off; pos < end; {
		b := pos / BlockSize
		n := min((b+1)*BlockSize, end) - pos
		hole := !m.filled[b]
		if k := len(out); k > 0 && out[k-1].Hole == hole {
			out[k-1].Length += n
		} else {
			out = append(out, nbd.Extent{Length: n, Hole: hole, Zero: hole})
		}
		pos += n
	}
	return out, nil
}

// CanMultiConn reports true: the backend is shared by all connections.
func (m *Mem) CanMultiConn() bool { return true }

// Bytes returns a copy of the backend's contents.
func (m *Mem) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}

// Server is an nbd.Server listening on a unix socket in t.TempDir().
type Server struct {
	*nbd.Server
	Socket string
}

// NewServer starts srv on a fresh unix socket; t.Cleanup shuts it down.
func NewServer(t testing.TB, exp nbd.Exporter, opts nbd.ServerOptions) *Server {
	return NewTLSServer(t, exp, opts, nil, nbd.TLSOff)
}

// NewTLSServer is NewServer with per-listener TLS.
func NewTLSServer(t testing.TB, exp nbd.Exporter, opts nbd.ServerOptions, cfg *tls.Config, mode nbd.TLSMode) *Server {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen %s: %v", sock, err)
	}
	srv := nbd.NewServer(exp, opts)
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(context.Background(), ln, cfg, mode) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown nbd server: %v", err)
		}
		<-done
	})
	return &Server{Server: srv, Socket: sock}
}
