package replication

import (
	"encoding/binary"
	"fmt"

	"github.com/tandem-dr/tandem/journal"
)

// Protocol versions this package speaks. A peer offers a range in Hello;
// the secondary picks the highest both speak or refuses with an error
// frame (errCodeVersion).
const (
	ProtocolVersion    = 4
	MinProtocolVersion = 1
)

// Error frame codes.
const (
	errCodeProtocol    = 1 // malformed or unexpected frame
	errCodeVersion     = 2 // no common protocol version
	errCodeUnknownDisk = 3 // the disk is not replicated here for this site
	errCodeCorrupt     = 4 // a record failed its chain or checksum check
	errCodeSink        = 5 // the secondary could not store what it received
	errCodeBusy        = 6 // the secondary is shutting down
	errCodeSize        = 7 // disk sizes differ
	errCodeDiverged    = 8 // a reconcile's point is not in the secondary's history
)

const maxString = 4096

// enc appends big-endian fields.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) i64(v int64)  { e.u64(uint64(v)) }
func (e *enc) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}
func (e *enc) str(s string) {
	if len(s) > maxString {
		s = s[:maxString]
	}
	e.u16(uint16(len(s)))
	e.b = append(e.b, s...)
}
func (e *enc) pos(p Position) { e.u64(p.Seq); e.u64(p.Sum) }

// dec reads big-endian fields; the first short read or bad value sticks in
// err and every later read returns zero.
type dec struct {
	b   []byte
	err error
	typ frameType
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.err = fmt.Errorf("%w: %s payload short", ErrBadFrame, d.typ)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
func (d *dec) u8() uint8 {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}
func (d *dec) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}
func (d *dec) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}
func (d *dec) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}
func (d *dec) i64() int64 { return int64(d.u64()) }
func (d *dec) bool() bool {
	switch v := d.u8(); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("bool %d", v)
		return false
	}
}
func (d *dec) str() string {
	n := int(d.u16())
	if n > maxString {
		d.fail("string of %d bytes", n)
		return ""
	}
	return string(d.take(n))
}
func (d *dec) pos() Position { return Position{Seq: d.u64(), Sum: d.u64()} }
func (d *dec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s: %s", ErrBadFrame, d.typ, fmt.Sprintf(format, args...))
	}
}

// done fails when bytes are left over, and returns the sticky error.
func (d *dec) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

// helloMsg opens a connection.
type helloMsg struct {
	MinVersion, MaxVersion uint16
	Disk                   string
	Size                   int64
	Head                   uint64 // the primary's head, for the log
}

func (m helloMsg) encode() []byte {
	var e enc
	e.u16(m.MinVersion)
	e.u16(m.MaxVersion)
	e.str(m.Disk)
	e.i64(m.Size)
	e.u64(m.Head)
	return e.b
}

func decodeHello(p []byte) (helloMsg, error) {
	d := dec{b: p, typ: frameHello}
	m := helloMsg{MinVersion: d.u16(), MaxVersion: d.u16(), Disk: d.str(), Size: d.i64(), Head: d.u64()}
	return m, d.done()
}

// welcomeMsg answers Hello with the chosen version and the durable state.
type welcomeMsg struct {
	Version uint16
	State   SinkState
}

func (m welcomeMsg) encode() []byte {
	var e enc
	e.u16(m.Version)
	st := m.State
	e.pos(st.Head)
	e.u64(st.Consistent)
	e.bool(st.Initialized)
	e.bool(st.Sync != nil)
	if s := st.Sync; s != nil {
		e.u64(s.ID)
		e.bool(s.Full)
		e.pos(s.Base)
		e.i64(s.Total)
		e.i64(s.CopiedThrough)
		e.bool(s.Ended)
		e.pos(s.End)
	}
	return e.b
}

func decodeWelcome(p []byte) (welcomeMsg, error) {
	d := dec{b: p, typ: frameWelcome}
	var m welcomeMsg
	m.Version = d.u16()
	m.State.Head = d.pos()
	m.State.Consistent = d.u64()
	m.State.Initialized = d.bool()
	if d.bool() {
		s := &SyncInfo{ID: d.u64(), Full: d.bool(), Base: d.pos(), Total: d.i64(),
			CopiedThrough: d.i64(), Ended: d.bool(), End: d.pos()}
		m.State.Sync = s
	}
	return m, d.done()
}

// errorMsg tells the peer why the connection is being closed.
type errorMsg struct {
	Code    uint16
	Message string
}

func (m errorMsg) encode() []byte {
	var e enc
	e.u16(m.Code)
	e.str(m.Message)
	return e.b
}

func decodeError(p []byte) (errorMsg, error) {
	d := dec{b: p, typ: frameError}
	m := errorMsg{Code: d.u16(), Message: d.str()}
	return m, d.done()
}

// ackMsg reports the secondary's durable state after a frame.
type ackMsg struct {
	Head          uint64 // newest durable record
	Consistent    uint64 // consistent point
	Syncing       bool   // a sync is in progress
	CopiedThrough int64  // the sync's durable copy offset
	Committed     uint64 // ID of the last sync committed on this connection, 0 if none
}

func (m ackMsg) encode() []byte {
	var e enc
	e.u64(m.Head)
	e.u64(m.Consistent)
	e.bool(m.Syncing)
	e.i64(m.CopiedThrough)
	e.u64(m.Committed)
	return e.b
}

func decodeAck(p []byte) (ackMsg, error) {
	d := dec{b: p, typ: frameAck}
	m := ackMsg{Head: d.u64(), Consistent: d.u64(), Syncing: d.bool(), CopiedThrough: d.i64(), Committed: d.u64()}
	return m, d.done()
}

// syncBeginMsg starts a sync.
type syncBeginMsg struct {
	ID    uint64
	Full  bool
	Base  Position
	Total int64
	// After (version 3, encoded only then) is the point the sync's
	// regions cover writes after: the secondary's consistent point for a
	// resync, or the reconcile's point after a divergence.
	After    uint64
	HasAfter bool
}

func (m syncBeginMsg) encode() []byte {
	var e enc
	e.u64(m.ID)
	e.bool(m.Full)
	e.pos(m.Base)
	e.i64(m.Total)
	if m.HasAfter {
		e.u64(m.After)
	}
	return e.b
}

func decodeSyncBegin(p []byte) (syncBeginMsg, error) {
	d := dec{b: p, typ: frameSyncBegin}
	m := syncBeginMsg{ID: d.u64(), Full: d.bool(), Base: d.pos(), Total: d.i64()}
	if d.err == nil && len(d.b) > 0 {
		m.After, m.HasAfter = d.u64(), true
	}
	if m.Total < 0 {
		d.fail("total %d", m.Total)
	}
	if m.HasAfter && m.After > m.Base.Seq {
		d.fail("after seq=%d past base seq=%d", m.After, m.Base.Seq)
	}
	return m, d.done()
}

// regionHeaderSize is the fixed part of a region frame: sync ID and offset;
// the data follows.
const regionHeaderSize = 16

func appendRegionHeader(b []byte, id uint64, off int64) []byte {
	b = binary.BigEndian.AppendUint64(b, id)
	return binary.BigEndian.AppendUint64(b, uint64(off))
}

// decodeRegion returns the sync ID, offset and data (aliasing p).
func decodeRegion(p []byte) (id uint64, off int64, data []byte, err error) {
	d := dec{b: p, typ: frameRegion}
	id, off = d.u64(), d.i64()
	if d.err == nil && off < 0 {
		d.fail("offset %d", off)
	}
	return id, off, d.b, d.err
}

// regionZeroMsg stages zeroes.
type regionZeroMsg struct {
	ID       uint64
	Off, Len int64
}

func (m regionZeroMsg) encode() []byte {
	var e enc
	e.u64(m.ID)
	e.i64(m.Off)
	e.i64(m.Len)
	return e.b
}

func decodeRegionZero(p []byte) (regionZeroMsg, error) {
	d := dec{b: p, typ: frameRegionZero}
	m := regionZeroMsg{ID: d.u64(), Off: d.i64(), Len: d.i64()}
	if d.err == nil && (m.Off < 0 || m.Len < 0) {
		d.fail("range off=%d len=%d", m.Off, m.Len)
	}
	return m, d.done()
}

// syncEndMsg ends a sync's copy.
type syncEndMsg struct {
	ID  uint64
	End Position
}

func (m syncEndMsg) encode() []byte {
	var e enc
	e.u64(m.ID)
	e.pos(m.End)
	return e.b
}

func decodeSyncEnd(p []byte) (syncEndMsg, error) {
	d := dec{b: p, typ: frameSyncEnd}
	m := syncEndMsg{ID: d.u64(), End: d.pos()}
	return m, d.done()
}

// pingMsg keeps an idle link alive and measures it.
type pingMsg struct{ Head uint64 }

func (m pingMsg) encode() []byte {
	var e enc
	e.u64(m.Head)
	return e.b
}

func decodePing(p []byte) (pingMsg, error) {
	d := dec{b: p, typ: framePing}
	m := pingMsg{Head: d.u64()}
	return m, d.done()
}

// policyMsg carries the part of the disk's protection policy that the
// secondary acts on (version 2).
type policyMsg struct {
	// Retention is how long the secondary keeps records, in seconds of
	// the records' times; 0 keeps every record.
	Retention uint64
	// Now (version 3, encoded only then) is the primary's clock when it
	// sent the frame, in Unix nanoseconds: the records' times are the
	// primary's, and the secondary measures the clocks' offset with it.
	Now    int64
	HasNow bool
}

func (m policyMsg) encode() []byte {
	var e enc
	e.u64(m.Retention)
	if m.HasNow {
		e.i64(m.Now)
	}
	return e.b
}

func decodePolicy(p []byte) (policyMsg, error) {
	d := dec{b: p, typ: framePolicy}
	m := policyMsg{Retention: d.u64()}
	if d.err == nil && len(d.b) > 0 {
		m.Now, m.HasNow = d.i64(), true
	}
	return m, d.done()
}

// reconcileMsg (version 3) tells the secondary that the sites diverged —
// it holds records the primary does not, after a crash of the primary
// lost records it had already shipped — and asks for the ranges its
// records after After touched. After is the last record the secondary
// acknowledged, which the secondary checks it holds with the same sum.
type reconcileMsg struct{ After Position }

func (m reconcileMsg) encode() []byte {
	var e enc
	e.pos(m.After)
	return e.b
}

func decodeReconcile(p []byte) (reconcileMsg, error) {
	d := dec{b: p, typ: frameReconcile}
	m := reconcileMsg{After: d.pos()}
	return m, d.done()
}

// maxRangesRegions bounds a ranges frame; a secondary with more answers
// Whole.
const maxRangesRegions = 64 << 10

// rangesMsg answers a reconcile: the ranges the secondary's records
// after the reconcile's point touched, or Whole when it no longer keeps
// them all (or they are too many to list).
type rangesMsg struct {
	Whole   bool
	Regions []Region
}

func (m rangesMsg) encode() []byte {
	var e enc
	e.bool(m.Whole)
	e.u32(uint32(len(m.Regions)))
	for _, r := range m.Regions {
		e.i64(r.Off)
		e.i64(r.Len)
	}
	return e.b
}

func decodeRanges(p []byte) (rangesMsg, error) {
	d := dec{b: p, typ: frameRanges}
	m := rangesMsg{Whole: d.bool()}
	n := d.u32()
	if n > maxRangesRegions || int(n)*16 > len(d.b) {
		d.fail("%d regions", n)
		return m, d.err
	}
	m.Regions = make([]Region, n)
	for i := range m.Regions {
		m.Regions[i] = Region{Off: d.i64(), Len: d.i64()}
		if r := m.Regions[i]; r.Off < 0 || r.Len < 0 {
			d.fail("region off=%d len=%d", r.Off, r.Len)
		}
	}
	return m, d.done()
}

// maxVerifyRegions bounds one verify request.
const maxVerifyRegions = 4096

// verifyReqMsg asks for digests of regions at the consistent point.
type verifyReqMsg struct {
	ID         uint64
	CheckChain bool
	Regions    []Region
}

func (m verifyReqMsg) encode() []byte {
	var e enc
	e.u64(m.ID)
	e.bool(m.CheckChain)
	e.u32(uint32(len(m.Regions)))
	for _, r := range m.Regions {
		e.i64(r.Off)
		e.i64(r.Len)
	}
	return e.b
}

func decodeVerifyReq(p []byte) (verifyReqMsg, error) {
	d := dec{b: p, typ: frameVerifyReq}
	m := verifyReqMsg{ID: d.u64(), CheckChain: d.bool()}
	n := d.u32()
	if n > maxVerifyRegions || int(n)*16 > len(d.b) {
		d.fail("%d regions", n)
		return m, d.err
	}
	m.Regions = make([]Region, n)
	for i := range m.Regions {
		m.Regions[i] = Region{Off: d.i64(), Len: d.i64()}
		if r := m.Regions[i]; r.Off < 0 || r.Len < 0 || r.Len > MaxFramePayload {
			d.fail("region off=%d len=%d", r.Off, r.Len)
		}
	}
	return m, d.done()
}

// digestSize is the size of a region digest (SHA-256).
const digestSize = 32

// verifyRespMsg answers a verify request.
type verifyRespMsg struct {
	ID           uint64
	Seq          uint64 // the consistent point the digests were taken at
	ChainChecked bool
	ChainThrough uint64
	ChainError   string
	Digests      [][digestSize]byte
}

func (m verifyRespMsg) encode() []byte {
	var e enc
	e.u64(m.ID)
	e.u64(m.Seq)
	e.bool(m.ChainChecked)
	e.u64(m.ChainThrough)
	e.str(m.ChainError)
	e.u32(uint32(len(m.Digests)))
	for _, dg := range m.Digests {
		e.b = append(e.b, dg[:]...)
	}
	return e.b
}

func decodeVerifyResp(p []byte) (verifyRespMsg, error) {
	d := dec{b: p, typ: frameVerifyResp}
	m := verifyRespMsg{ID: d.u64(), Seq: d.u64(), ChainChecked: d.bool(), ChainThrough: d.u64(), ChainError: d.str()}
	n := d.u32()
	if n > maxVerifyRegions || int(n)*digestSize > len(d.b) {
		d.fail("%d digests", n)
		return m, d.err
	}
	m.Digests = make([][digestSize]byte, n)
	for i := range m.Digests {
		copy(m.Digests[i][:], d.take(digestSize))
	}
	return m, d.done()
}

// Records frames: a 4-byte count, then the records in journal's binary
// form (journal.Record.AppendBinary), in sequence order.

// decodeRecords decodes a records frame into recs (reused), checking only
// structure; the receiver checks order and chain.
func decodeRecords(p []byte, recs []journal.Record) ([]journal.Record, error) {
	return decodeRecordsWith(p, recs, journal.DecodeRecord)
}

// decodeRecordViews is decodeRecords with each record's Data aliasing p.
func decodeRecordViews(p []byte, recs []journal.Record) ([]journal.Record, error) {
	return decodeRecordsWith(p, recs, journal.DecodeRecordView)
}

func decodeRecordsWith(p []byte, recs []journal.Record, decode func([]byte) (journal.Record, int, error)) ([]journal.Record, error) {
	d := dec{b: p, typ: frameRecords}
	n := d.u32()
	if d.err != nil {
		return recs, d.err
	}
	if n == 0 || uint64(n)*journal.HeaderSize > uint64(len(d.b)) {
		return recs, fmt.Errorf("%w: records: count %d for %d bytes", ErrBadFrame, n, len(d.b))
	}
	b := d.b
	for i := uint32(0); i < n; i++ {
		r, used, err := decode(b)
		if err != nil {
			return recs, fmt.Errorf("%w: records: record %d of %d: %v", ErrBadFrame, i, n, err)
		}
		recs = append(recs, r)
		b = b[used:]
	}
	if len(b) != 0 {
		return recs, fmt.Errorf("%w: records: %d trailing bytes", ErrBadFrame, len(b))
	}
	return recs, nil
}
