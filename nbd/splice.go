package nbd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// spliceMin is the smallest write moved from the socket into the file with
// splice(2); smaller ones are copied, where the extra copy costs less than
// the extra system calls.
const spliceMin = 128 << 10

// splicer moves write payloads from a plaintext socket into a file through
// a pipe, without copying them through user space. It belongs to the
// reading goroutine of one connection.
type splicer struct {
	rc      syscall.RawConn // the socket
	pr, pw  int             // the pipe; -1 until first used
	pipeCap int
	scratch []byte
}

func newSplicer(rc syscall.RawConn) *splicer {
	return &splicer{rc: rc, pr: -1, pw: -1}
}

func (s *splicer) close() {
	if s.pr >= 0 {
		unix.Close(s.pr)
		unix.Close(s.pw)
		s.pr, s.pw = -1, -1
	}
}

func (s *splicer) pipe() error {
	if s.pr >= 0 {
		return nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return err
	}
	s.pr, s.pw = p[0], p[1]
	s.pipeCap = 64 << 10
	if n, err := unix.FcntlInt(uintptr(s.pw), unix.F_SETPIPE_SZ, 1<<20); err == nil && n > 0 {
		s.pipeCap = n
	}
	return nil
}

// errStreamTorn marks a failure after which the request stream cannot be
// resynchronised: the connection must end.
var errStreamTorn = errors.New("nbd: request stream torn")

// write moves n payload bytes of a write request into f at off: first what
// br has already buffered, then the rest straight from the socket. A
// failure of the file is returned as fileErr after the remaining payload has
// been drained, so the connection stays in sync; any other error tears the
// stream.
func (s *splicer) write(br *bufio.Reader, f *os.File, off int64, n int) (fileErr, err error) {
	if k := min(br.Buffered(), n); k > 0 {
		p, _ := br.Peek(k)
		if _, e := f.WriteAt(p, off); e != nil && fileErr == nil {
			fileErr = e
		}
		br.Discard(k)
		off += int64(k)
		n -= k
	}
	if n == 0 {
		return fileErr, nil
	}
	if fileErr != nil {
		_, err = io.CopyN(io.Discard, br, int64(n))
		return fileErr, err
	}
	if err := s.pipe(); err != nil {
		return nil, fmt.Errorf("splice pipe: %w", err)
	}
	dst := int(f.Fd())
	for n > 0 {
		// Socket into the pipe, as much as is there (waiting for some).
		var got int
		var serr error
		err := s.rc.Read(func(fd uintptr) bool {
			k, e := unix.Splice(int(fd), nil, s.pw, nil, min(n, s.pipeCap), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case e == unix.EAGAIN:
				return false
			case e == unix.EINTR:
				return false
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
			return nil, fmt.Errorf("splice from socket: %w: %w", errStreamTorn, err)
		}
		n -= got
		// The pipe into the file.
		for got > 0 {
			if fileErr == nil {
				k, e := unix.Splice(s.pr, nil, dst, &off, got, unix.SPLICE_F_MOVE)
				if e == unix.EINTR {
					continue
				}
				if e == nil && k == 0 {
					e = io.ErrShortWrite
				}
				if e == nil {
					got -= int(k)
					continue
				}
				fileErr = e
			}
			// The file failed: empty the pipe so the stream stays in sync.
			if s.scratch == nil {
				s.scratch = make([]byte, 64<<10)
			}
			k, e := unix.Read(s.pr, s.scratch[:min(got, len(s.scratch))])
			if e != nil || k <= 0 {
				return fileErr, fmt.Errorf("drain splice pipe: %w", errStreamTorn)
			}
			got -= k
		}
	}
	return fileErr, nil
}
