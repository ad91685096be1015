package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// spliceMin is the smallest write moved from the socket into the file with
// splice(2); smaller ones are copied, where the extra copy costs less than
// the extra system calls.
const spliceMin = 128 << 10

// errStreamTorn marks a failure after which the request stream cannot be
// resynchronised: the connection must end.
var errStreamTorn = errors.New("nbd: request stream torn")

// pipe is a kernel pipe that carries one write's payload from the socket
// to the file.
type pipe struct {
	r, w int
	cap  int
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// splicer moves write payloads from a plaintext socket into a file through
// pipes, without copying them through user space: the reading goroutine
// fills a pipe from the socket (moving pages, not bytes) and a worker
// drains it into the file, so the next request is read while this one is
// written. It keeps a pool of pipes, one per write in flight.
type splicer struct {
	rc syscall.RawConn // the socket

	mu   sync.Mutex
	free []*pipe
	all  map[*pipe]struct{}
}

func newSplicer(rc syscall.RawConn) *splicer {
	return &splicer{rc: rc, all: make(map[*pipe]struct{})}
}

// close closes every pipe. No pipe may be in use.
func (s *splicer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.all {
		p.close()
	}
	s.all, s.free = nil, nil
}

// get returns an empty pipe from the pool or a new one.
func (s *splicer) get() (*pipe, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.free); n > 0 {
		p := s.free[n-1]
		s.free = s.free[:n-1]
		return p, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("splice pipe: %w", err)
	}
	p := &pipe{r: fds[0], w: fds[1], cap: 64 << 10}
	// 1 MiB holds a typical large write whole; larger ones go through
	// the pipe in chunks.
	if n, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, 1<<20); err == nil && n > 0 {
		p.cap = n
	}
	s.all[p] = struct{}{}
	return p, nil
}

// put returns an empty pipe to the pool; a broken one (not known to be
// empty) is closed instead.
func (s *splicer) put(p *pipe, broken bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if broken {
		delete(s.all, p)
		p.close()
		return
	}
	s.free = append(s.free, p)
}

// fill moves exactly n bytes (n <= p.cap) from the socket into p, waiting
// for them to arrive. Any failure tears the request stream.
func (s *splicer) fill(p *pipe, n int) error {
	for n > 0 {
		var got int
		var serr error
		err := s.rc.Read(func(fd uintptr) bool {
			k, e := unix.Splice(int(fd), nil, p.w, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case e == unix.EAGAIN || e == unix.EINTR:
				return false // wait until the socket is readable
			case e != nil:
				serr = e
			case k == 0:
				serr = io.ErrUnexpectedEOF
			}
			got = int(k)
			return true
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("splice from socket: %w: %w", errStreamTorn, err)
		}
		n -= got
	}
	return nil
}

// drain moves n bytes from p into f at off. After a file error (or with
// failed already set) the rest is read and thrown away, so the pipe can be
// reused; broken reports a pipe that could not be emptied.
func (p *pipe) drain(f *os.File, off int64, n int, failed error) (fileErr error, broken bool) {
	fileErr = failed
	dst := int(f.Fd())
	var scratch []byte
	for n > 0 {
		if fileErr == nil {
			k, e := unix.Splice(p.r, nil, dst, &off, n, unix.SPLICE_F_MOVE)
			if e == unix.EINTR {
				continue
			}
			if e == nil && k == 0 {
				e = io.ErrShortWrite
			}
			if e == nil {
				n -= int(k)
				continue
			}
			fileErr = e
		}
		if scratch == nil {
			scratch = make([]byte, min(n, 64<<10))
		}
		k, e := unix.Read(p.r, scratch[:min(n, len(scratch))])
		if e == unix.EINTR {
			continue
		}
		if e != nil || k <= 0 {
			return fileErr, true
		}
		n -= k
	}
	return fileErr, false
}
