package replication

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/tandem-dr/tandem/journal"
)

// ParseFrames reads frames from b until it ends or a frame is refused,
// decoding each payload as its type says, as the receiver and the sender
// do. It returns the number of frames read and the error that stopped it
// (nil at a clean end).
func ParseFrames(b []byte) (int, error) {
	fr := newFrameReader(bytes.NewReader(b))
	defer fr.close()
	n := 0
	var recs []journal.Record
	for {
		f, err := fr.next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		switch f.typ {
		case frameHello:
			_, err = decodeHello(f.payload)
		case frameWelcome:
			_, err = decodeWelcome(f.payload)
		case frameError:
			_, err = decodeError(f.payload)
		case frameRecords:
			// As the receiver: structure, then every record's sum and
			// the chain within the frame (its start is the receiver's).
			if recs, err = decodeRecords(f.payload, recs[:0]); err == nil {
				prev := recs[0].PrevSum
				for i := range recs {
					if err = recs[i].Verify(prev); err != nil {
						err = fmt.Errorf("%w: %w", ErrBadFrame, err)
						break
					}
					prev = recs[i].Sum
				}
			}
		case frameAck:
			_, err = decodeAck(f.payload)
		case frameSyncBegin:
			_, err = decodeSyncBegin(f.payload)
		case frameRegion:
			_, _, _, err = decodeRegion(f.payload)
		case frameRegionZero:
			_, err = decodeRegionZero(f.payload)
		case frameSyncEnd:
			_, err = decodeSyncEnd(f.payload)
		case framePing:
			_, err = decodePing(f.payload)
		case frameVerifyReq:
			_, err = decodeVerifyReq(f.payload)
		case frameVerifyResp:
			_, err = decodeVerifyResp(f.payload)
		case framePolicy:
			_, err = decodePolicy(f.payload)
		case frameReconcile:
			_, err = decodeReconcile(f.payload)
		case frameRanges:
			_, err = decodeRanges(f.payload)
		default:
			err = ErrBadFrame
		}
		if err != nil {
			return n, err
		}
	}
}

// EncodePolicy encodes a policy frame's payload.
func EncodePolicy(retentionSeconds uint64) []byte {
	return policyMsg{Retention: retentionSeconds}.encode()
}

// EncodeReconcile, EncodeRanges and EncodeSyncBeginAfter encode those
// frames' payloads (version 3).
func EncodeReconcile(seq, sum uint64) []byte {
	return reconcileMsg{After: Position{Seq: seq, Sum: sum}}.encode()
}

func EncodeRanges(whole bool, regions []Region) []byte {
	return rangesMsg{Whole: whole, Regions: regions}.encode()
}

func EncodeSyncBeginAfter(base, after uint64, hasAfter bool) []byte {
	return syncBeginMsg{ID: 1, Base: Position{Seq: base}, After: after, HasAfter: hasAfter}.encode()
}

// Frame type numbers, for tests that build frames.
const (
	FrameHello    = uint8(frameHello)
	FrameRecords  = uint8(frameRecords)
	FrameAck      = uint8(frameAck)
	FrameWelcome  = uint8(frameWelcome)
	FrameVerifyRq = uint8(frameVerifyReq)
	FramePolicy   = uint8(framePolicy)
	FrameReconc   = uint8(frameReconcile)
	FrameRanges   = uint8(frameRanges)
	FrameHeader   = frameHeaderSize
)

// EncodeFrame builds one frame as a sender would.
func EncodeFrame(typ uint8, payload []byte, compress bool) []byte {
	return encodeFrame(typ, payload, compress, false)
}

// EncodeFrameV4 is EncodeFrame by a sender whose peer speaks version 4:
// records frames carry a CRC of their header alone.
func EncodeFrameV4(typ uint8, payload []byte, compress bool) []byte {
	return encodeFrame(typ, payload, compress, true)
}

func encodeFrame(typ uint8, payload []byte, compress, headerCRC bool) []byte {
	fw, err := newFrameWriter(io.Discard, compress)
	if err != nil {
		panic(err)
	}
	defer fw.close()
	fw.headerCRC = headerCRC
	b, err := fw.encode(frameType(typ), payload)
	if err != nil {
		panic(err)
	}
	return append([]byte(nil), b...)
}

// FlagHeaderCRC is the flag of a frame whose CRC covers its header alone.
const FlagHeaderCRC = flagHeaderCRC

// EncodeFrameInPlace is EncodeFrame by way of encodeInPlace: the payload
// is copied after header room first, as the sender builds it.
func EncodeFrameInPlace(typ uint8, payload []byte, compress bool) []byte {
	fw, err := newFrameWriter(io.Discard, compress)
	if err != nil {
		panic(err)
	}
	defer fw.close()
	buf := append(make([]byte, frameHeaderSize), payload...)
	b, err := fw.encodeInPlace(frameType(typ), buf)
	if err != nil {
		panic(err)
	}
	return append([]byte(nil), b...)
}

// EncodeHello is a Hello payload.
func EncodeHello(disk string, size int64, minV, maxV uint16) []byte {
	return helloMsg{MinVersion: minV, MaxVersion: maxV, Disk: disk, Size: size}.encode()
}

// EncodeRecords is a records payload.
func EncodeRecords(recs []journal.Record) []byte {
	b := []byte{0, 0, 0, byte(len(recs))}
	for i := range recs {
		b, _ = recs[i].AppendBinary(b)
	}
	return b
}

// EncodeVerifyRequest is a verify request payload.
func EncodeVerifyRequest(regions []Region) []byte {
	return verifyReqMsg{ID: 1, Regions: regions}.encode()
}

// Further frame types and payloads for tests that speak the protocol by
// hand.
const (
	FrameSyncBegin = uint8(frameSyncBegin)
	FrameSyncEnd   = uint8(frameSyncEnd)
	FrameError     = uint8(frameError)
)

// EncodeSyncBegin is a SyncBegin payload.
func EncodeSyncBegin(id uint64, full bool, base Position, total int64) []byte {
	return syncBeginMsg{ID: id, Full: full, Base: base, Total: total}.encode()
}

// EncodeSyncEnd is a SyncEnd payload.
func EncodeSyncEnd(id uint64, end Position) []byte { return syncEndMsg{ID: id, End: end}.encode() }

// FrameReader returns a function reading successive frames from r.
func FrameReader(r io.Reader) func() (uint8, []byte, error) {
	fr := newFrameReader(r)
	return func() (uint8, []byte, error) {
		f, err := fr.next()
		if err != nil {
			return 0, nil, err
		}
		return uint8(f.typ), append([]byte(nil), f.payload...), nil
	}
}

// DecodeErrorFrame returns an error frame's code and message.
func DecodeErrorFrame(p []byte) (uint16, string, error) {
	m, err := decodeError(p)
	return m.Code, m.Message, err
}

// Error frame codes.
const (
	ErrCodeCorrupt     = errCodeCorrupt
	ErrCodeUnknownDisk = errCodeUnknownDisk
	ErrCodeVersion     = errCodeVersion
	ErrCodeSink        = errCodeSink
)

// FrameFlags encodes payloads as frames of typ on one compressing writer
// and returns each frame's flags byte.
func FrameFlags(payloads [][]byte, typ uint8) []byte {
	fw, err := newFrameWriter(io.Discard, true)
	if err != nil {
		panic(err)
	}
	defer fw.close()
	var flags []byte
	for _, p := range payloads {
		b, err := fw.encode(frameType(typ), p)
		if err != nil {
			panic(err)
		}
		flags = append(flags, b[3])
	}
	return flags
}

// AckedConsistent decodes an Ack payload's consistent point.
func AckedConsistent(p []byte) (uint64, error) {
	m, err := decodeAck(p)
	return m.Consistent, err
}

// The sender's window of records frames in flight.
const (
	MaxInflightFrames = DefaultMaxInflightFrames
	InflightWait      = inflightWait
)

// SampleSize is sampleSize: the bytes of an n-byte payload that the
// writer compresses to learn whether the payload pays.
func SampleSize(n int) int { return sampleSize(n) }

// EntropyChoices encodes payloads as frames of typ on one compressing
// writer and returns each frame and whether the writer went on without
// entropy coding after it.
func EntropyChoices(payloads [][]byte, typ uint8) (frames [][]byte, literal []bool) {
	fw, err := newFrameWriter(io.Discard, true)
	if err != nil {
		panic(err)
	}
	defer fw.close()
	for _, p := range payloads {
		b, err := fw.encode(frameType(typ), p)
		if err != nil {
			panic(err)
		}
		frames = append(frames, append([]byte(nil), b...))
		literal = append(literal, fw.literal)
	}
	return frames, literal
}

// EntropyProbeEvery is how many compressed frames apart the writer
// decides again whether entropy coding pays.
const EntropyProbeEvery = entropyProbeEvery
