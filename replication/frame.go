package replication

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// The frame header, 16 bytes, big-endian (see PROTOCOL.md):
//
//	off size field
//	  0    2 magic "TR"
//	  2    1 frame type
//	  3    1 flags (bit 0: payload is zstd-compressed; bit 1: the CRC
//	         covers the header only, records frames of version 4)
//	  4    4 payload length on the wire
//	  8    4 payload length after decompression (= wire length when not compressed)
//	 12    4 CRC-32C of header bytes 0..11 followed by the wire payload
//	         (by bytes 0..11 alone with flag bit 1)
const (
	frameHeaderSize = 16
	frameMagic      = 0x5452 // "TR"

	// MaxFramePayload is the largest payload a frame may carry, before or
	// after decompression. A header announcing more is refused before
	// anything is allocated.
	MaxFramePayload = 16 << 20

	flagZstd = 1 << 0
	// flagHeaderCRC (version 4, records frames only): the CRC covers the
	// header alone. A records frame's payload needs no CRC of its own:
	// every byte of it is covered by the records' chained xxhash sums,
	// which the receiver verifies before anything joins a group, and
	// in flight TLS's AEAD already refuses a changed byte. The CRC cost
	// the pipeline as much CPU as the encryption did, on both sides.
	flagHeaderCRC = 1 << 1
)

// frameType names what a frame carries.
type frameType uint8

const (
	frameHello      frameType = 1  // primary → secondary: versions, disk, size
	frameWelcome    frameType = 2  // secondary → primary: chosen version, durable state
	frameError      frameType = 3  // either way: code and message, then the sender closes
	frameRecords    frameType = 4  // primary → secondary: a batch of journal records
	frameAck        frameType = 5  // secondary → primary: durable head and consistent point
	frameSyncBegin  frameType = 6  // primary → secondary: start of an initial sync or resync
	frameRegion     frameType = 7  // primary → secondary: region data of the current sync
	frameRegionZero frameType = 8  // primary → secondary: a zero range of the current sync
	frameSyncEnd    frameType = 9  // primary → secondary: the copy is complete, with its end point
	framePing       frameType = 10 // primary → secondary: keepalive, answered by an Ack
	frameVerifyReq  frameType = 11 // primary → secondary: digests wanted for regions
	frameVerifyResp frameType = 12 // secondary → primary: the digests
	framePolicy     frameType = 13 // primary → secondary: the disk's policy (version 2)
	frameReconcile  frameType = 14 // primary → secondary: diverged; which ranges did your records after seq touch? (version 3)
	frameRanges     frameType = 15 // secondary → primary: those ranges (version 3)
)

func (t frameType) String() string {
	names := [...]string{"", "hello", "welcome", "error", "records", "ack", "sync-begin",
		"region", "region-zero", "sync-end", "ping", "verify-request", "verify-response", "policy",
		"reconcile", "ranges"}
	if int(t) < len(names) && t != 0 {
		return names[t]
	}
	return fmt.Sprintf("frame-type-%d", uint8(t))
}

var (
	// ErrBadFrame reports a frame that is garbled (bad magic, checksum,
	// length or payload). The connection it came on is closed and nothing
	// in it is applied.
	ErrBadFrame = errors.New("replication: bad frame")

	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// frame is one decoded frame. payload is owned by the frameReader and
// valid until its next call to next.
type frame struct {
	typ        frameType
	payload    []byte
	wire       int  // bytes on the wire, header included
	compressed bool // payload was decompressed (into frameReader.raw)
}

// frameReader reads frames from a connection, checking each one's CRC and
// decompressing its payload with bounded memory.
type frameReader struct {
	r    *bufio.Reader
	buf  []byte // wire payload
	raw  []byte // decompressed payload
	zdec *zstd.Decoder

	// Payload buffers the caller took (take) and gave back (recycle), for
	// the next frames; recycle may be called from another goroutine.
	fmu       sync.Mutex
	free      [][]byte
	freeBytes int // the capacity of free
}

// maxFreeBytes bounds the buffers a frameReader keeps for reuse: enough
// for what the receiver's pipeline holds at once (the group being
// applied, the group being appended, the group queued behind it, up to
// streamMaxBytes each, and the frame being read), so that a busy
// connection allocates no payload buffer in its steady state.
const maxFreeBytes = 4 * streamMaxBytes

// take hands the caller the buffer that holds the payload of f, the frame
// next returned last: the frameReader reads the next frames into other
// buffers. The caller may give it back with recycle once done with it.
func (fr *frameReader) take(f frame) []byte {
	var b []byte
	if f.compressed {
		b, fr.raw = fr.raw, nil
	} else {
		b, fr.buf = fr.buf, nil
	}
	return b
}

// recycle gives back buffers taken with take.
func (fr *frameReader) recycle(bufs [][]byte) {
	fr.fmu.Lock()
	defer fr.fmu.Unlock()
	for _, b := range bufs {
		if b != nil && fr.freeBytes+cap(b) <= maxFreeBytes {
			fr.free = append(fr.free, b[:0])
			fr.freeBytes += cap(b)
		}
	}
}

// idle lets the GC have the buffers kept for reuse (and the current ones,
// when large): a connection with nothing to carry holds no frame-sized
// memory. The caller must hold no payload of the frameReader's.
func (fr *frameReader) idle() {
	fr.fmu.Lock()
	fr.free, fr.freeBytes = nil, 0
	fr.fmu.Unlock()
	if cap(fr.buf) > 64<<10 {
		fr.buf = nil
	}
	fr.raw = nil
}

// reuse returns a recycled buffer, or nil when there is none.
func (fr *frameReader) reuse() []byte {
	fr.fmu.Lock()
	defer fr.fmu.Unlock()
	n := len(fr.free)
	if n == 0 {
		return nil
	}
	b := fr.free[n-1]
	fr.free[n-1] = nil
	fr.free = fr.free[:n-1]
	fr.freeBytes -= cap(b)
	return b
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 256<<10)}
}

// close releases the decompressor.
func (fr *frameReader) close() {
	if fr.zdec != nil {
		fr.zdec.Close()
		fr.zdec = nil
	}
}

// buffered reports whether a whole frame header is already buffered, so
// the caller may read on without blocking for long.
func (fr *frameReader) buffered() bool { return fr.r.Buffered() >= frameHeaderSize }

// next reads one frame. Errors other than io.EOF and the connection's own
// wrap ErrBadFrame.
func (fr *frameReader) next() (frame, error) {
	var h [frameHeaderSize]byte
	if _, err := io.ReadFull(fr.r, h[:]); err != nil {
		return frame{}, err
	}
	if m := binary.BigEndian.Uint16(h[0:]); m != frameMagic {
		return frame{}, fmt.Errorf("%w: magic %#04x", ErrBadFrame, m)
	}
	typ, flags := frameType(h[2]), h[3]
	n := binary.BigEndian.Uint32(h[4:])
	rawN := binary.BigEndian.Uint32(h[8:])
	if n > MaxFramePayload || rawN > MaxFramePayload {
		return frame{}, fmt.Errorf("%w: %s payload %d/%d bytes over %d", ErrBadFrame, typ, n, rawN, MaxFramePayload)
	}
	if flags&^(flagZstd|flagHeaderCRC) != 0 {
		return frame{}, fmt.Errorf("%w: %s unknown flags %#02x", ErrBadFrame, typ, flags)
	}
	if flags&flagHeaderCRC != 0 && typ != frameRecords {
		return frame{}, fmt.Errorf("%w: %s with a header-only checksum", ErrBadFrame, typ)
	}
	if flags&flagZstd == 0 && rawN != n {
		return frame{}, fmt.Errorf("%w: %s uncompressed with lengths %d and %d", ErrBadFrame, typ, n, rawN)
	}
	if err := fr.readPayload(int(n)); err != nil {
		return frame{}, fmt.Errorf("read %s payload: %w", typ, err)
	}
	crc := crc32.Checksum(h[:12], castagnoli)
	if flags&flagHeaderCRC == 0 {
		crc = crc32.Update(crc, castagnoli, fr.buf)
	}
	if want := binary.BigEndian.Uint32(h[12:]); crc != want {
		return frame{}, fmt.Errorf("%w: %s checksum %08x, want %08x", ErrBadFrame, typ, crc, want)
	}
	f := frame{typ: typ, payload: fr.buf, wire: frameHeaderSize + int(n)}
	if flags&flagZstd != 0 {
		if fr.zdec == nil {
			d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
				zstd.WithDecoderMaxMemory(MaxFramePayload), zstd.WithDecodeAllCapLimit(true))
			if err != nil {
				return frame{}, fmt.Errorf("new zstd decoder: %w", err)
			}
			fr.zdec = d
		}
		if fr.raw == nil {
			fr.raw = fr.reuse()
		}
		if cap(fr.raw) < int(rawN) {
			fr.raw = make([]byte, 0, rawN)
		}
		out, err := fr.zdec.DecodeAll(fr.buf, fr.raw[:0:rawN])
		if err != nil {
			return frame{}, fmt.Errorf("%w: %s decompress: %v", ErrBadFrame, typ, err)
		}
		if len(out) != int(rawN) {
			return frame{}, fmt.Errorf("%w: %s decompressed to %d bytes, header says %d", ErrBadFrame, typ, len(out), rawN)
		}
		f.payload, f.compressed = out, true
	}
	return f, nil
}

// readPayload reads n bytes into fr.buf. The buffer grows with the bytes
// that actually arrive, not with what the header announces, so a lying
// header costs no more memory than the data sent.
func (fr *frameReader) readPayload(n int) error {
	if fr.buf == nil {
		fr.buf = fr.reuse()
	}
	fr.buf = fr.buf[:0]
	for len(fr.buf) < n {
		have := len(fr.buf)
		step := min(n-have, max(have, 64<<10))
		if cap(fr.buf) < have+step {
			nb := make([]byte, have, have+step)
			copy(nb, fr.buf)
			fr.buf = nb
		}
		fr.buf = fr.buf[:have+step]
		if _, err := io.ReadFull(fr.r, fr.buf[have:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// frameWriter encodes frames into one buffer per frame and writes each
// with a single Write call.
type frameWriter struct {
	w    io.Writer
	out  []byte
	zenc *zstd.Encoder // nil: never compress
	// Compression must pay for its CPU: zstd costs a few milliseconds per
	// MiB of poorly compressible data, a TLS link a tenth of that per MiB
	// saved. After a frame that did not shrink by a quarter, the next skip
	// frames go raw, skip doubling (up to maxSkip) while data stays so,
	// unless a sample from the middle of one shrinks by a quarter: data
	// that turns compressible is compressed from its first frame, where
	// maxSkip frames of 4 MiB would have sent a quarter GiB raw.
	skip, backoff int
	sample        []byte // the compressed sample, kept for reuse
	// Entropy coding (Huffman) of literals costs a tenth to a third of
	// zstd's time and pays only when literals are skewed (text, not random bytes
	// between matches, as in fio's buffers or encrypted and compressed
	// files). zlit is the encoder without it: every entropyProbeEvery
	// compressed frames one is compressed both ways, and the next ones go
	// through zlit unless entropy coding saved a 32nd of the frame.
	zlit    *zstd.Encoder
	literal bool   // compress with zlit
	probeIn int    // compressed frames until the next probe
	probe   []byte // the probe's second output, kept for reuse
	// headerCRC: records frames carry flagHeaderCRC (the peer speaks
	// version 4 or later).
	headerCRC bool
}

const maxSkip = 64

// newFrameWriter returns a writer that compresses payloads of compressible
// frame types when compress is true.
func newFrameWriter(w io.Writer, compress bool) (*frameWriter, error) {
	fw := &frameWriter{w: w}
	if compress {
		opts := []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true),
			zstd.WithEncoderCRC(false)} // the frame CRC covers it
		e, err := zstd.NewWriter(nil, opts...)
		if err != nil {
			return nil, fmt.Errorf("new zstd encoder: %w", err)
		}
		l, err := zstd.NewWriter(nil, append(opts, zstd.WithNoEntropyCompression(true))...)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("new zstd encoder: %w", err)
		}
		fw.zenc, fw.zlit = e, l
	}
	return fw, nil
}

func (fw *frameWriter) close() {
	for _, e := range []**zstd.Encoder{&fw.zenc, &fw.zlit} {
		if *e != nil {
			(*e).Close()
			*e = nil
		}
	}
}

// Every entropyProbeEvery compressed frames, compress also decides
// whether entropy coding pays (see frameWriter.zlit).
const entropyProbeEvery = 16

// encoder returns the encoder frames go through now.
func (fw *frameWriter) encoder() *zstd.Encoder {
	if fw.literal {
		return fw.zlit
	}
	return fw.zenc
}

// encodeAll compresses payload after the frame header's room in fw.out
// and returns that frame (its header not yet written). On a probe it
// compresses payload both with and without entropy coding, keeps the
// smaller and chooses the encoder for the frames up to the next probe.
func (fw *frameWriter) encodeAll(payload []byte) []byte {
	out := fw.encoder().EncodeAll(payload, fw.outBuf(len(payload))[:frameHeaderSize])
	fw.out = out
	if fw.probeIn--; fw.probeIn > 0 {
		return out
	}
	fw.probeIn = entropyProbeEvery
	other := fw.zlit
	if fw.literal {
		other = fw.zenc
	}
	if cap(fw.probe) < cap(out) {
		fw.probe = make([]byte, 0, cap(out))
	}
	alt := other.EncodeAll(payload, fw.probe[:frameHeaderSize])
	withEnt, without := len(out), len(alt)
	if fw.literal {
		withEnt, without = without, withEnt
	}
	fw.literal = withEnt > without-without/32
	if len(alt) < len(out) {
		fw.out, fw.probe = alt, out[:0]
		return alt
	}
	fw.probe = alt[:0]
	return out
}

// encode builds the frame for payload into fw.out, compressing it when
// the writer compresses and it pays. It returns the frame's bytes.
func (fw *frameWriter) encode(typ frameType, payload []byte) ([]byte, error) {
	if len(payload) > MaxFramePayload {
		return nil, fmt.Errorf("encode %s: payload %d bytes over %d", typ, len(payload), MaxFramePayload)
	}
	if out, ok := fw.compress(typ, payload); ok {
		return out, nil
	}
	out := append(fw.outBuf(len(payload))[:frameHeaderSize], payload...)
	fw.out = out
	putFrameHeader(out, typ, fw.flags(typ), len(payload))
	return out, nil
}

// encodeInPlace is encode for a payload built after frameHeaderSize bytes
// of room at the start of buf: unless it compresses the payload (into
// fw.out), it writes the header into that room and returns buf, so the
// payload is not copied.
func (fw *frameWriter) encodeInPlace(typ frameType, buf []byte) ([]byte, error) {
	payload := buf[frameHeaderSize:]
	if len(payload) > MaxFramePayload {
		return nil, fmt.Errorf("encode %s: payload %d bytes over %d", typ, len(payload), MaxFramePayload)
	}
	if out, ok := fw.compress(typ, payload); ok {
		return out, nil
	}
	putFrameHeader(buf, typ, fw.flags(typ), len(payload))
	return buf, nil
}

// compress returns the frame of payload compressed, in fw.out, when the
// writer compresses, the frame type is one it compresses and it pays.
func (fw *frameWriter) compress(typ frameType, payload []byte) ([]byte, bool) {
	if fw.zenc == nil || len(payload) < 512 || (typ != frameRecords && typ != frameRegion) {
		return nil, false
	}
	if fw.skip > 0 {
		fw.skip--
		if !fw.samplePays(payload) {
			return nil, false
		}
	}
	out := fw.encodeAll(payload)
	n := len(out) - frameHeaderSize
	if n <= len(payload)-len(payload)/4 {
		fw.backoff = 0
	} else {
		fw.backoff = min(max(2*fw.backoff, 1), maxSkip)
		fw.skip = fw.backoff
	}
	if n >= len(payload) {
		return nil, false
	}
	putFrameHeader(out, typ, flagZstd|fw.flags(typ), len(payload))
	return out, true
}

// Bounds of the sample samplePays compresses: a sixty-fourth of the
// payload, from minSample to maxSample (a sixty-fourth of a 4 MiB frame).
// On data that zstd's fastest level finds barely compressible, as fio's
// default buffers (0.92-0.95 of their size), it runs at only 100-150
// MB/s: a 64 KiB sample of every 1 MiB frame took a third of the
// primary's CPU under sync mode's 1 MiB writes.
const (
	minSample = 4 << 10
	maxSample = 64 << 10
)

// sampleSize is the size of the sample of an n-byte payload; 0 when n is
// under 32 minimum samples, which never pay: the frame would cost little
// more.
func sampleSize(n int) int {
	if n < 32*minSample {
		return 0
	}
	return min(max(n/64, minSample), maxSample)
}

// samplePays reports whether a sample from the middle of payload (past
// the records' headers at its start) shrinks by a quarter.
func (fw *frameWriter) samplePays(payload []byte) bool {
	k := sampleSize(len(payload))
	if k == 0 {
		return false
	}
	mid := len(payload) / 2
	in := payload[mid : mid+k]
	fw.sample = fw.encoder().EncodeAll(in, fw.sample[:0])
	return len(fw.sample) <= len(in)-len(in)/4
}

// flags returns the flags a frame of type typ carries besides flagZstd.
func (fw *frameWriter) flags(typ frameType) byte {
	if fw.headerCRC && typ == frameRecords {
		return flagHeaderCRC
	}
	return 0
}

// outBuf returns fw.out emptied, with room for a frame of an n-byte
// payload (and some slack, so that it rarely grows again).
func (fw *frameWriter) outBuf(n int) []byte {
	if cap(fw.out) < frameHeaderSize+n {
		fw.out = make([]byte, 0, frameHeaderSize+n+n/8)
	}
	return fw.out[:0]
}

// putFrameHeader writes the header of the frame in f (header, then the
// wire payload) whose payload is rawLen bytes before compression.
func putFrameHeader(f []byte, typ frameType, flags byte, rawLen int) {
	h, body := f[:frameHeaderSize], f[frameHeaderSize:]
	binary.BigEndian.PutUint16(h[0:], frameMagic)
	h[2] = byte(typ)
	h[3] = flags
	binary.BigEndian.PutUint32(h[4:], uint32(len(body)))
	binary.BigEndian.PutUint32(h[8:], uint32(rawLen))
	crc := crc32.Checksum(h[:12], castagnoli)
	if flags&flagHeaderCRC == 0 {
		crc = crc32.Update(crc, castagnoli, body)
	}
	binary.BigEndian.PutUint32(h[12:], crc)
}

// write encodes and writes one frame, returning the bytes put on the wire.
func (fw *frameWriter) write(typ frameType, payload []byte) (int, error) {
	b, err := fw.encode(typ, payload)
	if err != nil {
		return 0, err
	}
	if _, err := fw.w.Write(b); err != nil {
		return 0, fmt.Errorf("write %s frame: %w", typ, err)
	}
	return len(b), nil
}
