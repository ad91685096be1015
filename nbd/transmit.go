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
)

// reply is one reply (simple, or a structured chunk) queued for the writer.
type reply struct {
	hdr  [32]byte
	n    int    // bytes of hdr used
	data []byte // payload after the header, if any
	buf  *[]byte
}

var replyPool = sync.Pool{New: func() any { return new(reply) }}

// replyWriter serialises replies onto the connection. Replies queued while
// it writes are batched into one write.
type replyWriter struct {
	nc   net.Conn
	ch   chan *reply
	done chan struct{}
	err  error // set by run before done closes
}

func newReplyWriter(nc net.Conn, depth int) *replyWriter {
	w := &replyWriter{nc: nc, ch: make(chan *reply, depth+1), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *replyWriter) send(r *reply) { w.ch <- r }

// close waits until every queued reply is written.
func (w *replyWriter) close() error {
	close(w.ch)
	<-w.done
	return w.err
}

// maxBatch bounds the replies gathered into one write.
const maxBatch = 64

func (w *replyWriter) run() {
	defer close(w.done)
	smallBuf := make([]byte, 0, 64<<10)
	bufsBuf := make(net.Buffers, 0, 2*maxBatch+2)
	small, bufs := smallBuf, bufsBuf
	var held []*reply
	flush := func() {
		if w.err == nil && (len(small) > 0 || len(bufs) > 0) {
			if len(bufs) == 0 {
				_, w.err = w.nc.Write(small)
			} else {
				if len(small) > 0 {
					bufs = append(bufs, small)
				}
				_, w.err = bufs.WriteTo(w.nc)
			}
			if w.err != nil {
				w.nc.Close() // the reader sees the failure too
			}
		}
		small, bufs = smallBuf[:0], bufsBuf[:0]
		for _, r := range held {
			putBuf(r.buf)
			r.buf, r.data = nil, nil
			replyPool.Put(r)
		}
		held = held[:0]
	}
	for r := range w.ch {
		if w.err != nil {
			putBuf(r.buf)
			r.buf, r.data = nil, nil
			replyPool.Put(r)
			continue
		}
		if len(r.data) < 16<<10 {
			small = append(small, r.hdr[:r.n]...)
			small = append(small, r.data...)
		} else {
			// Large payloads are written from their buffer (writev), after
			// whatever small replies precede them.
			if len(small) > 0 {
				bufs = append(bufs, small)
				small = small[len(small):]
			}
			bufs = append(bufs, r.hdr[:r.n], r.data)
		}
		held = append(held, r)
		if len(w.ch) == 0 || len(small) >= 48<<10 || len(held) >= maxBatch {
			flush()
		}
	}
	flush()
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

// transmitter serves the requests of one connection.
type transmitter struct {
	ctx  context.Context
	sess *session
	be   Backend
	size uint64
	w    *replyWriter
}

// transmit runs the transmission phase: this goroutine reads requests, a
// bounded set of goroutines serves them, and the reply writer sends the
// replies in whatever order they complete.
func (c *conn) transmit(ctx context.Context, sess *session) error {
	depth := c.srv.opts.MaxInFlight
	t := &transmitter{ctx: ctx, sess: sess, be: sess.exp.Backend, size: uint64(sess.exp.Size)}
	t.w = newReplyWriter(c.nc, depth)
	br := bufio.NewReaderSize(c.nc, 64<<10)
	sem := make(chan struct{}, depth)
	var wg sync.WaitGroup
	var hdr [RequestSize]byte
	var err error
	for {
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
				t.replyErr(&req, EINVAL)
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
			t.replyErr(&req, e)
			continue
		}
		wg.Add(1)
		go func(req Request, buf *[]byte) {
			defer wg.Done()
			t.serve(&req, buf)
			<-sem
		}(req, buf)
	}
	wg.Wait()
	werr := t.w.close()
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("transmission: %w", err)
	}
	return nil
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
func (t *transmitter) replyErr(r *Request, e Errno) {
	rp := replyPool.Get().(*reply)
	if t.sess.structured {
		rp.chunk(r.Cookie, replyFlagDone, replyTypeError, 6)
		binary.BigEndian.PutUint32(rp.hdr[20:], uint32(e))
		binary.BigEndian.PutUint16(rp.hdr[24:], 0)
		rp.n = 26
	} else {
		rp.simple(r.Cookie, e)
	}
	t.w.send(rp)
}

// replyOK queues a successful reply without payload.
func (t *transmitter) replyOK(r *Request) {
	rp := replyPool.Get().(*reply)
	if t.sess.structured {
		rp.chunk(r.Cookie, replyFlagDone, replyTypeNone, 0)
	} else {
		rp.simple(r.Cookie, 0)
	}
	t.w.send(rp)
}

// serve executes a checked request and queues its reply. buf holds a
// write's payload and is released here.
func (t *transmitter) serve(r *Request, buf *[]byte) {
	off, n := int64(r.Offset), int64(r.Length)
	var err error
	switch r.Type {
	case CmdRead:
		t.read(r)
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
		t.blockStatus(r)
		return
	}
	if err != nil {
		t.replyErr(r, errnoOf(err))
		return
	}
	t.replyOK(r)
}

func (t *transmitter) read(r *Request) {
	buf := getBuf(int(r.Length))
	if _, err := t.be.ReadAt(*buf, int64(r.Offset)); err != nil && !(errors.Is(err, io.EOF) && len(*buf) == int(r.Length)) {
		putBuf(buf)
		t.replyErr(r, errnoOf(err))
		return
	}
	rp := replyPool.Get().(*reply)
	if t.sess.structured {
		rp.chunk(r.Cookie, replyFlagDone, replyTypeOffsetData, 8+r.Length)
		binary.BigEndian.PutUint64(rp.hdr[20:], r.Offset)
		rp.n = 28
	} else {
		rp.simple(r.Cookie, 0)
	}
	rp.data, rp.buf = *buf, buf
	t.w.send(rp)
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

func (t *transmitter) blockStatus(r *Request) {
	off, n := int64(r.Offset), int64(r.Length)
	var exts []Extent
	if ex, ok := t.be.(Extenter); ok {
		var err error
		exts, err = ex.Extents(off, n)
		if err != nil {
			t.replyErr(r, errnoOf(err))
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
		t.replyErr(r, EIO)
		return
	}
	rp := replyPool.Get().(*reply)
	rp.chunk(r.Cookie, replyFlagDone, replyTypeBlockStat, uint32(len(p)))
	rp.data, rp.buf = p, payload
	t.w.send(rp)
}
