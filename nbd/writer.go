package nbd

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// reply is one reply (simple, or a structured chunk) queued for the writer.
type reply struct {
	hdr  [32]byte
	n    int    // bytes of hdr used
	data []byte // payload after the header, if any
	buf  *[]byte

	// A payload sent from a file with sendfile instead of data.
	file    *os.File
	fileOff int64
	fileLen int
}

var replyPool = sync.Pool{New: func() any { return new(reply) }}

// replyWriter serialises replies onto the connection without a goroutine
// of its own: the goroutine that queues a reply while nobody is writing
// becomes the writer and drains the queue, so replies queued meanwhile by
// others go out in the same writev (flat combining). A reply is never
// handed to another goroutine just to be written.
type replyWriter struct {
	nc net.Conn
	rc syscall.RawConn // the socket, for sendfile; nil on TLS

	mu      sync.Mutex
	queue   []*reply
	spare   []*reply
	writing bool
	err     error

	small []byte      // only the writer touches these
	bufs  net.Buffers // only the writer touches these
}

func newReplyWriter(nc net.Conn, depth int) *replyWriter {
	var rc syscall.RawConn
	switch c := nc.(type) {
	case *net.UnixConn:
		rc, _ = c.SyscallConn()
	case *net.TCPConn:
		rc, _ = c.SyscallConn()
	}
	return &replyWriter{
		rc:    rc,
		nc:    nc,
		queue: make([]*reply, 0, depth+1),
		spare: make([]*reply, 0, depth+1),
		small: make([]byte, 0, 64<<10),
		bufs:  make(net.Buffers, 0, 2*depth+4),
	}
}

// send queues r and, when no other goroutine is writing, writes every
// queued reply before returning. With lazy, r is only queued: the caller
// (the reading goroutine, which knows more requests are already buffered)
// promises a later send or flush.
func (w *replyWriter) send(r *reply, lazy bool) {
	w.mu.Lock()
	if r != nil {
		w.queue = append(w.queue, r)
	}
	if w.writing || lazy || len(w.queue) == 0 {
		w.mu.Unlock()
		return
	}
	w.writing = true
	for len(w.queue) > 0 {
		batch := w.queue
		w.queue = w.spare[:0]
		failed := w.err != nil
		w.mu.Unlock()
		var err error
		if !failed {
			err = w.write(batch)
		}
		for i, r := range batch {
			putBuf(r.buf)
			r.buf, r.data, r.file = nil, nil, nil
			replyPool.Put(r)
			batch[i] = nil
		}
		w.mu.Lock()
		if err != nil && w.err == nil {
			w.err = err
			w.nc.Close() // the reader sees the failure too
		}
		w.spare = batch[:0]
	}
	w.writing = false
	w.mu.Unlock()
}

// write sends a batch of replies: small ones gathered into one buffer,
// large payloads straight from their buffers, all in one writev.
func (w *replyWriter) write(batch []*reply) error {
	small, bufs := w.small[:0], w.bufs[:0]
	start := 0
	for _, r := range batch {
		small = append(small, r.hdr[:r.n]...)
		if r.file != nil {
			// Everything before, this header included, then the file.
			bufs = append(bufs, small[start:])
			start = len(small)
			if _, err := bufs.WriteTo(w.nc); err != nil {
				return err
			}
			bufs = w.bufs[:0]
			if err := sendfile(w.rc, r.file, r.fileOff, r.fileLen); err != nil {
				return err
			}
			continue
		}
		if len(r.data) < 16<<10 {
			small = append(small, r.data...)
			continue
		}
		bufs = append(bufs, small[start:], r.data)
		start = len(small)
	}
	if start < len(small) {
		bufs = append(bufs, small[start:])
	}
	var err error
	switch len(bufs) {
	case 0:
	case 1:
		_, err = w.nc.Write(bufs[0])
	default:
		_, err = bufs.WriteTo(w.nc)
	}
	if cap(small) <= 1<<20 {
		w.small = small[:0]
	}
	return err
}

// flush writes whatever lazy sends left queued.
func (w *replyWriter) flush() { w.send(nil, false) }

// close returns the first write error. Every sender has returned by now.
func (w *replyWriter) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (r *reply) simple(cookie uint64, errno Errno) {
	binary.BigEndian.PutUint32(r.hdr[0:], magicSimple)
	binary.BigEndian.PutUint32(r.hdr[4:], uint32(errno))
	binary.BigEndian.PutUint64(r.hdr[8:], cookie)
	r.n = 16
}

func (r *reply) chunk(cookie uint64, flags, typ uint16, length uint32) {
	binary.BigEndian.PutUint32(r.hdr[0:], magicStructured)
	binary.BigEndian.PutUint16(r.hdr[4:], flags)
	binary.BigEndian.PutUint16(r.hdr[6:], typ)
	binary.BigEndian.PutUint64(r.hdr[8:], cookie)
	binary.BigEndian.PutUint32(r.hdr[16:], length)
	r.n = 20
}

// sendfile sends n bytes of f from off to the socket behind rc. A failure
// part-way leaves the stream torn: the caller ends the connection.
func sendfile(rc syscall.RawConn, f *os.File, off int64, n int) error {
	src := int(f.Fd())
	var serr error
	err := rc.Write(func(fd uintptr) bool {
		for n > 0 {
			k, e := unix.Sendfile(int(fd), src, &off, n)
			if k > 0 {
				n -= k
			}
			switch {
			case e == unix.EAGAIN:
				return false // wait until the socket is writable
			case e == unix.EINTR:
			case e != nil:
				serr = e
				return true
			case k == 0:
				serr = io.ErrUnexpectedEOF
				return true
			}
		}
		return true
	})
	runtime.KeepAlive(f)
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("sendfile: %w", err)
	}
	return nil
}
