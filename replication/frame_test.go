package replication_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replication"
)

func sealed(n int, size int) []journal.Record {
	var recs []journal.Record
	var prev uint64
	for i := 1; i <= n; i++ {
		r := journal.Record{Seq: uint64(i), Time: time.Unix(1700000000, int64(i)).UTC(), Kind: journal.KindWrite,
			Off: int64(i * 4096), Len: int64(size), Data: bytes.Repeat([]byte{byte(i)}, size)}
		r.Seal(prev)
		prev = r.Sum
		recs = append(recs, r)
	}
	return recs
}

func TestFrameRoundTrip(t *testing.T) {
	recs := sealed(3, 4096)
	for _, compress := range []bool{false, true} {
		var stream []byte
		stream = append(stream, replication.EncodeFrame(replication.FrameHello, replication.EncodeHello("vm1", 1<<20, 1, 1), compress)...)
		stream = append(stream, replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(recs), compress)...)
		n, err := replication.ParseFrames(stream)
		if err != nil || n != 2 {
			t.Errorf("compress=%v: ParseFrames = %d, %v; want 2, nil", compress, n, err)
		}
		if compress && len(stream) > 2*4096 {
			t.Errorf("compressed stream is %d bytes; want under %d for repetitive records", len(stream), 2*4096)
		}
	}
}

// TestFrameInPlace: a frame encoded in place (the sender's records path)
// is byte for byte the frame encode makes, compressed or not.
func TestFrameInPlace(t *testing.T) {
	noisy := sealed(2, 64<<10)
	rng := rand.New(rand.NewPCG(5, 6))
	var prev uint64
	for i := range noisy {
		for j := range noisy[i].Data {
			noisy[i].Data[j] = byte(rng.Uint32())
		}
		noisy[i].Seal(prev)
		prev = noisy[i].Sum
	}
	for _, payload := range [][]byte{replication.EncodeRecords(sealed(3, 4096)), replication.EncodeRecords(noisy), replication.EncodeRecords(sealed(1, 10))} {
		for _, compress := range []bool{false, true} {
			want := replication.EncodeFrame(replication.FrameRecords, payload, compress)
			got := replication.EncodeFrameInPlace(replication.FrameRecords, payload, compress)
			if !bytes.Equal(got, want) {
				t.Errorf("compress=%v, %d-byte payload: in-place frame differs (%d bytes, want %d)", compress, len(payload), len(got), len(want))
			}
			if n, err := replication.ParseFrames(got); err != nil || n != 1 {
				t.Errorf("compress=%v: ParseFrames = %d, %v; want 1, nil", compress, n, err)
			}
		}
	}
}

// TestHeaderCRCFrames: version 4's records frames, whose CRC covers the
// header alone, round trip compressed or not; a changed payload byte is
// still refused (by the records' own sums), a changed header byte by the
// CRC; no other frame type may carry the flag.
func TestHeaderCRCFrames(t *testing.T) {
	payload := replication.EncodeRecords(sealed(3, 4096))
	for _, compress := range []bool{false, true} {
		f := replication.EncodeFrameV4(replication.FrameRecords, payload, compress)
		if f[3]&replication.FlagHeaderCRC == 0 {
			t.Fatalf("compress=%v: flags %#02x; want the header-only CRC flag", compress, f[3])
		}
		if n, err := replication.ParseFrames(f); err != nil || n != 1 {
			t.Errorf("compress=%v: ParseFrames = %d, %v; want 1, nil", compress, n, err)
		}
	}
	if f := replication.EncodeFrame(replication.FrameRecords, payload, false); f[3] != 0 {
		t.Errorf("a version-3 records frame has flags %#02x; want 0", f[3])
	}
	if f := replication.EncodeFrameV4(replication.FrameAck, make([]byte, 25), false); f[3] != 0 {
		t.Errorf("a version-4 ack frame has flags %#02x; want 0 (the CRC covers it whole)", f[3])
	}

	good := replication.EncodeFrameV4(replication.FrameRecords, payload, false)
	for _, at := range []int{replication.FrameHeader + 5, replication.FrameHeader + 60, len(good) / 2, len(good) - 1} {
		bad := append([]byte(nil), good...)
		bad[at] ^= 0x04
		if _, err := replication.ParseFrames(bad); !errors.Is(err, replication.ErrBadFrame) {
			t.Errorf("payload byte %d flipped: ParseFrames error %v; want ErrBadFrame", at, err)
		}
	}
	badHeader := append([]byte(nil), good...)
	badHeader[9] ^= 0x01 // the raw length
	if _, err := replication.ParseFrames(badHeader); !errors.Is(err, replication.ErrBadFrame) {
		t.Errorf("header byte flipped: ParseFrames error %v; want ErrBadFrame", err)
	}
	// A hello frame claiming a header-only CRC, with that CRC right.
	hello := replication.EncodeFrame(replication.FrameHello, replication.EncodeHello("vm1", 1<<20, 1, 4), false)
	hello[3] |= replication.FlagHeaderCRC
	binary.BigEndian.PutUint32(hello[12:], crc32.Checksum(hello[:12], crc32.MakeTable(crc32.Castagnoli)))
	if _, err := replication.ParseFrames(hello); !errors.Is(err, replication.ErrBadFrame) {
		t.Errorf("hello with a header-only CRC: ParseFrames error %v; want ErrBadFrame", err)
	}
}

func TestFrameRefusals(t *testing.T) {
	good := replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(sealed(2, 512)), false)
	huge := append([]byte(nil), good[:replication.FrameHeader]...)
	binary.BigEndian.PutUint32(huge[4:], 4<<30-1)
	binary.BigEndian.PutUint32(huge[8:], 4<<30-1)
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-7] ^= 0x20
	badMagic := append([]byte(nil), good...)
	badMagic[0] = 'X'
	tests := []struct {
		name string
		in   []byte
	}{
		{"4 GiB length", huge},
		{"flipped payload bit", flipped},
		{"bad magic", badMagic},
		{"truncated payload", good[:len(good)-3]},
		{"unknown type", replication.EncodeFrame(200, []byte{1, 2, 3}, false)},
		{"trailing bytes in ack", replication.EncodeFrame(replication.FrameAck, make([]byte, 40), false)},
		{"records count lies", replication.EncodeFrame(replication.FrameRecords, []byte{0, 0, 0, 9, 1, 2}, false)},
		{"verify region count lies", replication.EncodeFrame(replication.FrameVerifyRq, []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff}, false)},
	}
	for _, tc := range tests {
		_, err := replication.ParseFrames(tc.in)
		if err == nil {
			t.Errorf("%s: ParseFrames succeeded; want an error", tc.name)
		} else if tc.name != "truncated payload" && !errors.Is(err, replication.ErrBadFrame) {
			t.Errorf("%s: error %v; want ErrBadFrame", tc.name, err)
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	recs := sealed(2, 300)
	f.Add(replication.EncodeFrame(replication.FrameHello, replication.EncodeHello("disk", 1<<30, 1, 1), false))
	f.Add(replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(recs), false))
	f.Add(replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(recs), true))
	f.Add(replication.EncodeFrameV4(replication.FrameRecords, replication.EncodeRecords(recs), false))
	f.Add(replication.EncodeFrameV4(replication.FrameRecords, replication.EncodeRecords(recs), true))
	f.Add(replication.EncodeFrame(replication.FrameAck, make([]byte, 25), false))
	f.Add(replication.EncodeFrame(replication.FrameVerifyRq, replication.EncodeVerifyRequest([]replication.Region{{Off: 0, Len: 4096}}), false))
	f.Add([]byte("TR\x04\x00\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = replication.ParseFrames(b)
	})
}

// FuzzDecodePayload wraps arbitrary payloads in well-formed frames (valid
// CRC), so the fuzzer reaches the payload decoders behind the checksum.
func FuzzDecodePayload(f *testing.F) {
	f.Add(replication.FrameHello, replication.EncodeHello("disk", 1<<30, 1, 1), false)
	f.Add(replication.FrameRecords, replication.EncodeRecords(sealed(2, 100)), true)
	f.Add(replication.FrameVerifyRq, replication.EncodeVerifyRequest([]replication.Region{{Off: 4096, Len: 4096}}), false)
	f.Add(replication.FrameWelcome, make([]byte, 35), false)
	f.Add(replication.FramePolicy, replication.EncodePolicy(86400), false)
	f.Add(replication.FrameReconc, replication.EncodeReconcile(42, 0xfeed), false)
	f.Add(replication.FrameRanges, replication.EncodeRanges(false, []replication.Region{{Off: 0, Len: 4096}, {Off: 1 << 20, Len: 512}}), false)
	f.Add(replication.FrameSyncBegin, replication.EncodeSyncBeginAfter(10, 7, true), false)
	f.Fuzz(func(t *testing.T, typ uint8, payload []byte, compress bool) {
		if len(payload) > replication.MaxFramePayload {
			return
		}
		_, err3 := replication.ParseFrames(replication.EncodeFrame(typ, payload, compress))
		// A version-4 sender's frame (header-only CRC on records) is
		// accepted exactly when the version-3 frame is.
		_, err4 := replication.ParseFrames(replication.EncodeFrameV4(typ, payload, compress))
		if (err3 == nil) != (err4 == nil) {
			t.Errorf("type %d: version 3 frame: %v; version 4 frame: %v", typ, err3, err4)
		}
	})
}

// TestIncompressibleSkipsCompression checks that random data soon goes
// raw (no CPU spent on zstd) while compressible data is compressed.
func TestIncompressibleSkipsCompression(t *testing.T) {
	random := make([]byte, 256<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	text := bytes.Repeat([]byte("compressible "), 20000)
	flags := replication.FrameFlags([][]byte{random, random, random}, replication.FrameRecords)
	if flags[0] != 0 || flags[1] != 0 || flags[2] != 0 {
		t.Errorf("random frames flags %v; want raw (0)", flags)
	}
	if got := replication.FrameFlags([][]byte{text}, replication.FrameRecords); got[0] == 0 {
		t.Errorf("compressible frame sent raw; want zstd")
	}
	// After a run of random frames, compressible data is compressed again
	// from its first frame: a sample of it shows that it pays.
	payloads := [][]byte{}
	for i := 0; i < 20; i++ {
		payloads = append(payloads, random)
	}
	for i := 0; i < 5; i++ {
		payloads = append(payloads, text)
	}
	flags = replication.FrameFlags(payloads, replication.FrameRecords)
	for i, f := range flags[:20] {
		if i >= 1 && f != 0 {
			t.Errorf("random frame %d compressed; want raw", i)
		}
	}
	for i, f := range flags[20:] {
		if f == 0 {
			t.Errorf("compressible frame %d after random ones sent raw (flags %v); want zstd", i, flags[20:])
		}
	}
}

// TestSampleCostBounded: while frames go raw, the sample that decides
// whether a frame pays is compressed at most a 32nd of the frame's size
// (zstd may run at only 100 MB/s on barely compressible data), and at
// least 4 KiB, so that it still tells.
func TestSampleCostBounded(t *testing.T) {
	for _, n := range []int{0, 4 << 10, 127 << 10, 128 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20} {
		k := replication.SampleSize(n)
		switch {
		case n < 128<<10 && k != 0:
			t.Errorf("SampleSize(%d) = %d, want 0 (too small to pay)", n, k)
		case n >= 128<<10 && (k < 4<<10 || k > n/32 || k > 64<<10):
			t.Errorf("SampleSize(%d) = %d, want 4 KiB to min(n/32, 64 KiB)", n, k)
		}
	}
	if k := replication.SampleSize(1 << 20); k > 16<<10 {
		t.Errorf("SampleSize(1 MiB) = %d, want at most 16 KiB", k)
	}
}

// TestLyingLengthCostsLittle: a header announcing the largest payload,
// followed by a few bytes, must not make the reader allocate the payload.
func TestLyingLengthCostsLittle(t *testing.T) {
	good := replication.EncodeFrame(replication.FrameRecords, replication.EncodeRecords(sealed(1, 100)), false)
	lie := append([]byte(nil), good[:replication.FrameHeader]...)
	binary.BigEndian.PutUint32(lie[4:], replication.MaxFramePayload)
	binary.BigEndian.PutUint32(lie[8:], replication.MaxFramePayload)
	lie = append(lie, make([]byte, 100)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < 10; i++ {
		if _, err := replication.ParseFrames(lie); err == nil {
			t.Fatalf("a truncated frame parsed")
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 10; per > 1<<20 {
		t.Errorf("a lying 16 MiB header cost %d bytes of allocation; want under 1 MiB", per)
	}
}

// TestVersion3Payloads: the reconcile, ranges and version-3 sync-begin
// and policy payloads parse; an "after" past the base, a negative range
// and a truncated clock do not.
func TestVersion3Payloads(t *testing.T) {
	for _, tc := range []struct {
		name string
		typ  uint8
		p    []byte
		ok   bool
	}{
		{"reconcile", replication.FrameReconc, replication.EncodeReconcile(42, 0xfeed), true},
		{"reconcile short", replication.FrameReconc, replication.EncodeReconcile(42, 0xfeed)[:12], false},
		{"ranges", replication.FrameRanges, replication.EncodeRanges(false, []replication.Region{{Off: 0, Len: 4096}}), true},
		{"ranges whole", replication.FrameRanges, replication.EncodeRanges(true, nil), true},
		{"ranges negative", replication.FrameRanges, replication.EncodeRanges(false, []replication.Region{{Off: -1, Len: 4096}}), false},
		{"ranges count lies", replication.FrameRanges, replication.EncodeRanges(false, []replication.Region{{Off: 0, Len: 1}})[:10], false},
		{"sync begin v2", replication.FrameSyncBegin, replication.EncodeSyncBeginAfter(10, 0, false), true},
		{"sync begin v3", replication.FrameSyncBegin, replication.EncodeSyncBeginAfter(10, 7, true), true},
		{"policy v2", replication.FramePolicy, replication.EncodePolicy(86400), true},
		{"policy v3", replication.FramePolicy, append(replication.EncodePolicy(86400), 0x18, 0, 0, 0, 0, 0, 0, 1), true},
		{"policy v3 short", replication.FramePolicy, append(replication.EncodePolicy(86400), 0x18, 0), false},
		{"sync begin after past base", replication.FrameSyncBegin, replication.EncodeSyncBeginAfter(10, 11, true), false},
	} {
		_, err := replication.ParseFrames(replication.EncodeFrame(tc.typ, tc.p, false))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestEntropyCodingChosen: a writer compresses without entropy coding
// (a tenth to a third cheaper) data whose literals are random bytes between matches,
// as fio's reused buffers, and keeps it for data whose literals are
// skewed, as text. Each frame decodes to its payload and is at most a
// 32nd larger than a fresh writer's frame of it (which tries both ways).
func TestEntropyCodingChosen(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	blocks := make([][]byte, 16)
	for i := range blocks {
		blocks[i] = make([]byte, 4096)
		for j := range blocks[i] {
			blocks[i][j] = byte(rng.Uint32())
		}
	}
	reused := func() []byte { // 256 KiB of 4 KiB blocks drawn from 16
		var p []byte
		for len(p) < 256<<10 {
			p = append(p, blocks[rng.IntN(len(blocks))]...)
		}
		return p
	}
	skewed := func() []byte { // 256 KiB of letters, few repeats
		p := make([]byte, 256<<10)
		for i := range p {
			p[i] = 'a' + byte(min(rng.ExpFloat64()*3, 25))
		}
		return p
	}
	for _, tc := range []struct {
		name    string
		gen     func() []byte
		literal bool
	}{
		{"random literals", reused, true},
		{"skewed literals", skewed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var payloads [][]byte
			for range 2*replication.EntropyProbeEvery + 1 {
				payloads = append(payloads, tc.gen())
			}
			frames, literal := replication.EntropyChoices(payloads, replication.FrameRecords)
			for i, lit := range literal {
				if lit != tc.literal {
					t.Errorf("after frame %d: without entropy coding %v, want %v", i, lit, tc.literal)
				}
			}
			next := replication.FrameReader(bytes.NewReader(bytes.Join(frames, nil)))
			for i, p := range payloads {
				typ, got, err := next()
				if err != nil || typ != replication.FrameRecords || !bytes.Equal(got, p) {
					t.Fatalf("frame %d: type %d, %d bytes, err %v; want its %d-byte payload", i, typ, len(got), err, len(p))
				}
				ref := replication.EncodeFrame(replication.FrameRecords, p, true)
				if len(frames[i]) > len(ref)+len(ref)/32 {
					t.Errorf("frame %d: %d bytes, a fresh writer's frame %d", i, len(frames[i]), len(ref))
				}
			}
		})
	}
}
