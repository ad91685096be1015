package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// transmitter serves the requests of one connection.
type transmitter struct {
	files FileRanger // nil unless the backend has one and the connection is plaintext
	lat   *latencies
	ctx   context.Context
	sess  *session
	be    Backend
	size  uint64
	w     *replyWriter
}

// transmit runs the transmission phase: this goroutine reads requests, a
// bounded set of goroutines serves them, and the reply writer sends the
// replies in whatever order they complete.
func (c *conn) transmit(ctx context.Context, sess *session) error {
	depth := c.srv.opts.MaxInFlight
	tuneSocket(c.raw)
	t := &transmitter{lat: newLatencies(), ctx: ctx, sess: sess, be: sess.exp.Backend, size: uint64(sess.exp.Size)}
	t.w = newReplyWriter(c.nc, depth)
	if fr, ok := t.be.(FileRanger); ok && t.w.rc != nil {
		t.files = fr
	}
	br := bufio.NewReaderSize(c.nc, 64<<10)
	var sp *splicer
	if t.files != nil {
		sp = newSplicer(t.w.rc)
	}
	sem := make(chan struct{}, depth)
	var wg sync.WaitGroup
	// Fast requests go, in order, to one worker: reading the next request
	// overlaps serving this one, and the worker batches replies while more
	// work is queued (it always sends the last one, which flushes the rest).
	fast := make(chan job, depth)
	var fwg sync.WaitGroup
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		for j := range fast {
			t.serveTimed(&j.req, j.buf, len(fast) > 0)
			<-sem
		}
	}()
	// Other requests go to a pool of workers, started as needed up to
	// depth, each serving requests until the connection ends: a journaled
	// write runs deep (tap, journal, pwritev), and a goroutine per request
	// grew that stack anew each time, a tenth of the daemon's CPU on 4 KiB
	// writes.
	slow := make(chan job)
	workers := 0
	var hdr [RequestSize]byte
	var err error
	for {
		if br.Buffered() < RequestSize {
			t.w.flush() // about to wait for the client: send what is queued
		}
		if _, err = io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = nil // the client went away between requests
			}
			break
		}
		var req Request
		if err = req.UnmarshalBinary(hdr[:]); err != nil {
			break
		}
		if req.Type == CmdDisc {
			break
		}
		// The slot is taken before a write's payload is read, so at most
		// MaxInFlight payloads are held per connection.
		sem <- struct{}{}
		if sp != nil && req.Type == CmdWrite && req.Length >= spliceMin && req.Length <= MaxPayload {
			if done, e := t.spliceWrite(sp, br, &req, &wg, sem); done || e != nil {
				if e != nil {
					err = e
					break
				}
				continue
			}
		}
		var buf *[]byte
		if req.Type == CmdWrite {
			if req.Length > MaxPayload {
				<-sem
				if req.Length > discardLimit {
					err = fmt.Errorf("write of %d bytes: %w", req.Length, errHardDisconnect)
					break
				}
				if _, err = io.CopyN(io.Discard, br, int64(req.Length)); err != nil {
					break
				}
				t.replyErr(&req, EINVAL, true)
				continue
			}
			if req.Length > 0 {
				buf = getBuf(int(req.Length))
				if _, err = io.ReadFull(br, *buf); err != nil {
					putBuf(buf)
					<-sem
					break
				}
			}
		}
		if e := t.check(&req); e != 0 {
			putBuf(buf)
			<-sem
			t.replyErr(&req, e, true)
			continue
		}
		if req.Flags&CmdFlagFUA == 0 && t.lat.fast(req.Type) {
			fast <- job{req, buf}
			continue
		}
		select {
		case slow <- job{req, buf}:
		default:
			if workers == depth {
				slow <- job{req, buf} // one is about to be free: this holds a slot
				break
			}
			workers++
			wg.Add(1)
			go func(j job) {
				defer wg.Done()
				for ok := true; ok; j, ok = <-slow {
					t.serveTimed(&j.req, j.buf, false)
					<-sem
				}
			}(job{req, buf})
		}
	}
	close(fast)
	close(slow)
	fwg.Wait()
	wg.Wait()
	if sp != nil {
		sp.close()
	}
	t.w.flush()
	werr := t.w.close()
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("transmission: %w", err)
	}
	return nil
}

// spliceWrite serves a large write to a file-backed export by splicing its
// payload from the socket into the file. The reading goroutine moves the
// payload into a pipe; a goroutine of its own writes the pipe into the file
// and replies. It reports false when the request must take the ordinary
// path (its payload is then still unread) and an error when the stream is
// torn. When it reports true it has released the request's slot in sem (or
// its goroutine will).
func (t *transmitter) spliceWrite(sp *splicer, br *bufio.Reader, req *Request, wg *sync.WaitGroup, sem chan struct{}) (bool, error) {
	if t.check(req) != 0 {
		return false, nil
	}
	f, foff, ok := t.files.FileRange(int64(req.Offset), int64(req.Length))
	if !ok {
		return false, nil
	}
	p, err := sp.get()
	if err != nil {
		return false, nil
	}
	n := int(req.Length)
	// What the reader has already buffered is copied; the rest is spliced.
	var prefix *[]byte
	if k := min(br.Buffered(), n); k > 0 {
		prefix = getBuf(k)
		b, _ := br.Peek(k)
		copy(*prefix, b)
		br.Discard(k)
		n -= k
	}
	finish := func(chunk int) {
		start := time.Now()
		var fileErr error
		off := foff
		if prefix != nil {
			_, fileErr = f.WriteAt(*prefix, off)
			off += int64(len(*prefix))
			putBuf(prefix)
		}
		var broken bool
		if chunk > 0 {
			fileErr, broken = p.drain(f, off, chunk, fileErr)
		}
		sp.put(p, broken)
		if fileErr == nil && req.Flags&CmdFlagFUA != 0 {
			fileErr = t.be.(Flusher).Flush(t.ctx)
		}
		t.lat.observe(CmdWrite, time.Since(start))
		if fileErr != nil {
			t.replyErr(req, errnoOf(fileErr), false)
		} else {
			t.replyOK(req, false)
		}
	}
	if n <= p.cap {
		if err := sp.fill(p, n); err != nil {
			putBuf(prefix)
			sp.put(p, true)
			<-sem
			return true, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			finish(n)
			<-sem
		}()
		return true, nil
	}
	// A payload larger than the pipe: chunk by chunk, on this goroutine.
	var fileErr error
	off := foff
	if prefix != nil {
		_, fileErr = f.WriteAt(*prefix, off)
		off += int64(len(*prefix))
		putBuf(prefix)
		prefix = nil
	}
	for n > 0 {
		chunk := min(n, p.cap)
		if err := sp.fill(p, chunk); err != nil {
			sp.put(p, true)
			<-sem
			return true, err
		}
		var broken bool
		fileErr, broken = p.drain(f, off, chunk, fileErr)
		if broken {
			sp.put(p, true)
			<-sem
			return true, fmt.Errorf("splice write: %w", errStreamTorn)
		}
		off += int64(chunk)
		n -= chunk
	}
	sp.put(p, false)
	if fileErr == nil && req.Flags&CmdFlagFUA != 0 {
		fileErr = t.be.(Flusher).Flush(t.ctx)
	}
	if fileErr != nil {
		t.replyErr(req, errnoOf(fileErr), false)
	} else {
		t.replyOK(req, false)
	}
	<-sem
	return true, nil
}

// check validates a request against the export and the negotiated flags.
func (t *transmitter) check(r *Request) Errno {
	f := t.sess.flags
	if t.sess.exp.ReadOnly && (r.Type == CmdWrite || r.Type == CmdTrim || r.Type == CmdWriteZeroes) {
		return EPERM
	}
	var allowed uint16
	switch r.Type {
	case CmdRead:
		if t.sess.structured {
			allowed = CmdFlagDF
		}
	case CmdWrite:
		allowed = CmdFlagFUA
	case CmdTrim:
		if f&FlagSendTrim == 0 {
			return EINVAL
		}
		allowed = CmdFlagFUA
	case CmdWriteZeroes:
		if f&FlagSendWriteZeroes == 0 {
			return EINVAL
		}
		allowed = CmdFlagFUA | CmdFlagNoHole
		if f&FlagSendFastZero != 0 {
			allowed |= CmdFlagFastZero
		}
	case CmdFlush:
		if f&FlagSendFlush == 0 {
			return EINVAL
		}
		if r.Flags != 0 || r.Offset != 0 || r.Length != 0 {
			return EINVAL
		}
		return 0
	case CmdCache:
	case CmdBlockStatus:
		if !t.sess.metaBase {
			return EINVAL
		}
		allowed = CmdFlagReqOne
	default:
		return EINVAL
	}
	if f&FlagSendFUA == 0 {
		allowed &^= CmdFlagFUA
	}
	if r.Flags&^allowed != 0 {
		return EINVAL
	}
	if r.Length == 0 {
		return EINVAL
	}
	if r.Offset > t.size || uint64(r.Length) > t.size-r.Offset {
		if r.Type == CmdWrite || r.Type == CmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	}
	if r.Type == CmdRead && r.Length > MaxPayload {
		return EINVAL
	}
	return 0
}

// replyErr queues an error reply for r.
func (t *transmitter) replyErr(r *Request, e Errno, lazy bool) {
	rp := replyPool.Get().(*reply)
	if t.sess.structured {
		rp.chunk(r.Cookie, replyFlagDone, replyTypeError, 6)
		binary.BigEndian.PutUint32(rp.hdr[20:], uint32(e))
		binary.BigEndian.PutUint16(rp.hdr[24:], 0)
		rp.n = 26
	} else {
		rp.simple(r.Cookie, e)
	}
	t.w.send(rp, lazy)
}

// replyOK queues a successful reply without payload.
func (t *transmitter) replyOK(r *Request, lazy bool) {
	rp := replyPool.Get().(*reply)
	if t.sess.structured {
		rp.chunk(r.Cookie, replyFlagDone, replyTypeNone, 0)
	} else {
		rp.simple(r.Cookie, 0)
	}
	t.w.send(rp, lazy)
}

// serveTimed serves r and records how long the backend took.
func (t *transmitter) serveTimed(r *Request, buf *[]byte, lazy bool) {
	start := time.Now()
	t.serve(r, buf, lazy)
	t.lat.observe(r.Type, time.Since(start))
}

// serve executes a checked request and queues its reply. buf holds a
// write's payload and is released here.
func (t *transmitter) serve(r *Request, buf *[]byte, lazy bool) {
	off, n := int64(r.Offset), int64(r.Length)
	var err error
	switch r.Type {
	case CmdRead:
		t.read(r, lazy)
		return
	case CmdWrite:
		err = t.write(*buf, off, r.Flags&CmdFlagFUA != 0)
		putBuf(buf)
	case CmdFlush:
		err = t.be.(Flusher).Flush(t.ctx)
	case CmdTrim:
		err = t.be.(Trimmer).Trim(off, n)
		if err == nil && r.Flags&CmdFlagFUA != 0 {
			err = t.be.(Flusher).Flush(t.ctx)
		}
	case CmdWriteZeroes:
		err = t.zero(off, n, r.Flags)
	case CmdCache:
		err = t.cache(off, n)
	case CmdBlockStatus:
		t.blockStatus(r, lazy)
		return
	}
	if err != nil {
		t.replyErr(r, errnoOf(err), lazy)
		return
	}
	t.replyOK(r, lazy)
}

// sendfileMin is the smallest read sent with sendfile: below it, a copy
// batched with other replies into one writev is cheaper.
const sendfileMin = 64 << 10

func (t *transmitter) read(r *Request, lazy bool) {
	if t.files != nil && r.Length >= sendfileMin {
		if f, foff, ok := t.files.FileRange(int64(r.Offset), int64(r.Length)); ok {
			rp := replyPool.Get().(*reply)
			t.readHeader(rp, r)
			rp.file, rp.fileOff, rp.fileLen = f, foff, int(r.Length)
			t.w.send(rp, lazy)
			return
		}
	}
	buf := getBuf(int(r.Length))
	if _, err := t.be.ReadAt(*buf, int64(r.Offset)); err != nil && !(errors.Is(err, io.EOF) && len(*buf) == int(r.Length)) {
		putBuf(buf)
		t.replyErr(r, errnoOf(err), lazy)
		return
	}
	rp := replyPool.Get().(*reply)
	t.readHeader(rp, r)
	rp.data, rp.buf = *buf, buf
	t.w.send(rp, lazy)
}

// readHeader fills the header of a successful read's reply.
func (t *transmitter) readHeader(rp *reply, r *Request) {
	if t.sess.structured {
		rp.chunk(r.Cookie, replyFlagDone, replyTypeOffsetData, 8+r.Length)
		binary.BigEndian.PutUint64(rp.hdr[20:], r.Offset)
		rp.n = 28
	} else {
		rp.simple(r.Cookie, 0)
	}
}

func (t *transmitter) write(p []byte, off int64, fua bool) error {
	if fua {
		if fw, ok := t.be.(FUAWriter); ok {
			_, err := fw.WriteAtFUA(p, off)
			return err
		}
	}
	if _, err := t.be.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return t.be.(Flusher).Flush(t.ctx)
	}
	return nil
}

func (t *transmitter) zero(off, n int64, flags uint16) error {
	var err error
	if z, ok := t.be.(Zeroer); ok {
		err = z.Zero(off, n, flags&CmdFlagNoHole == 0)
		if err != nil && flags&CmdFlagFastZero != 0 {
			if errnoOf(err) == ENOTSUP {
				return ENOTSUP
			}
		}
	} else {
		err = t.writeZeroes(off, n)
	}
	if err == nil && flags&CmdFlagFUA != 0 {
		err = t.be.(Flusher).Flush(t.ctx)
	}
	return err
}

func (t *transmitter) writeZeroes(off, n int64) error {
	chunk := min(n, 1<<20)
	buf := getBuf(int(chunk))
	defer putBuf(buf)
	clear(*buf)
	for n > 0 {
		k := min(n, chunk)
		if _, err := t.be.WriteAt((*buf)[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// cache warms the backend by reading the range.
func (t *transmitter) cache(off, n int64) error {
	chunk := min(n, 1<<20)
	buf := getBuf(int(chunk))
	defer putBuf(buf)
	for n > 0 {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		k := min(n, chunk)
		if _, err := t.be.ReadAt((*buf)[:k], off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// maxExtents bounds the descriptors of one block-status reply.
const maxExtents = 2048

func (t *transmitter) blockStatus(r *Request, lazy bool) {
	off, n := int64(r.Offset), int64(r.Length)
	var exts []Extent
	if ex, ok := t.be.(Extenter); ok {
		var err error
		exts, err = ex.Extents(off, n)
		if err != nil {
			t.replyErr(r, errnoOf(err), lazy)
			return
		}
	}
	if len(exts) == 0 {
		exts = []Extent{{Length: n}}
	}
	// Encode, merging runs of equal status, within the requested range.
	payload := getBuf(4 + 8*maxExtents)
	p := binary.BigEndian.AppendUint32((*payload)[:0], metaBaseAllocationID)
	var total int64
	var last uint32
	count := 0
	for _, e := range exts {
		if e.Length <= 0 || total >= n {
			break
		}
		l := min(e.Length, n-total)
		var st uint32
		if e.Hole {
			st |= stateHole
		}
		if e.Zero {
			st |= stateZero
		}
		if count > 0 && st == last {
			prev := binary.BigEndian.Uint32(p[len(p)-8:])
			if uint64(prev)+uint64(l) <= 1<<32-1 {
				binary.BigEndian.PutUint32(p[len(p)-8:], prev+uint32(l))
				total += l
				continue
			}
		}
		if count == maxExtents || r.Flags&CmdFlagReqOne != 0 && count == 1 {
			break
		}
		p = binary.BigEndian.AppendUint32(p, uint32(l))
		p = binary.BigEndian.AppendUint32(p, st)
		last = st
		total += l
		count++
	}
	if count == 0 {
		putBuf(payload)
		t.replyErr(r, EIO, lazy)
		return
	}
	rp := replyPool.Get().(*reply)
	rp.chunk(r.Cookie, replyFlagDone, replyTypeBlockStat, uint32(len(p)))
	rp.data, rp.buf = p, payload
	t.w.send(rp, lazy)
}

// socketBuffer is the send and receive buffer asked of the kernel for a
// transmitting connection (capped by net.core.wmem_max/rmem_max): a 1 MiB
// reply then goes out with few partial writes and poller wake-ups.
const socketBuffer = 4 << 20

func tuneSocket(nc net.Conn) {
	type buffered interface {
		SetWriteBuffer(int) error
		SetReadBuffer(int) error
	}
	if b, ok := nc.(buffered); ok {
		b.SetWriteBuffer(socketBuffer)
		b.SetReadBuffer(socketBuffer)
	}
}

// job is a checked request (with a write's payload) for the fast worker.
type job struct {
	req Request
	buf *[]byte
}
