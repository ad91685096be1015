package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Wire constants of the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd).
const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt        = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply   = 0x0003e889045565a9
	magicRequest    = 0x25609513
	magicSimple     = 0x67446698
	magicStructured = 0x668e33ef

	// Handshake flags (server) and client flags.
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	// Options.
	optExportName       = 1
	optAbort            = 2
	optList             = 3
	optStartTLS         = 5
	optInfo             = 6
	optGo               = 7
	optStructuredReply  = 8
	optListMetaContext  = 9
	optSetMetaContext   = 10
	optExtendedHeaders  = 11
	repAck              = 1
	repServer           = 2
	repInfo             = 3
	repMetaContext      = 4
	repErrUnsup         = 1<<31 + 1
	repErrPolicy        = 1<<31 + 2
	repErrInvalid       = 1<<31 + 3
	repErrPlatform      = 1<<31 + 4
	repErrTLSReqd       = 1<<31 + 5
	repErrUnknown       = 1<<31 + 6
	repErrShutdown      = 1<<31 + 7
	repErrBlockSizeReqd = 1<<31 + 8
	repErrTooBig        = 1<<31 + 9

	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Transmission flags, sent to the client with the export's size.
const (
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagSendDF          uint16 = 1 << 7
	FlagCanMultiConn    uint16 = 1 << 8
	FlagSendResize      uint16 = 1 << 9
	FlagSendCache       uint16 = 1 << 10
	FlagSendFastZero    uint16 = 1 << 11
)

// Commands of the transmission phase.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags.
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
)

// Structured reply chunk types and flags.
const (
	replyFlagDone       = 1 << 0
	replyTypeNone       = 0
	replyTypeOffsetData = 1
	replyTypeOffsetHole = 2
	replyTypeBlockStat  = 5
	replyTypeError      = 1<<15 + 1
	replyTypeErrorOff   = 1<<15 + 2
)

// base:allocation status bits.
const (
	stateHole = 1 << 0
	stateZero = 1 << 1
)

// Limits the server enforces and advertises.
const (
	// MaxPayload is the largest read or write the server accepts; it is
	// advertised as the maximum block size in NBD_INFO_BLOCK_SIZE.
	MaxPayload = 32 << 20
	// PreferredBlockSize is advertised in NBD_INFO_BLOCK_SIZE.
	PreferredBlockSize = 4096
	// MaxNameLength is the longest export name or meta-context query the
	// protocol allows.
	MaxNameLength = 4096
	// MaxOptionLength is the longest option payload the server reads. A
	// longer one up to discardLimit is skipped and answered with
	// NBD_REP_ERR_TOO_BIG; beyond that the connection is closed.
	MaxOptionLength = 64 << 10
	// discardLimit bounds the bytes the server reads and throws away to
	// keep a stream in sync (an oversized option or write payload).
	discardLimit = 64 << 20
)

// metaBaseAllocation is the only meta context the server offers.
const (
	metaBaseAllocation   = "base:allocation"
	metaBaseAllocationID = 1
)

// Errno is an error code of the NBD transmission phase.
type Errno uint32

// The error values the protocol defines.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

// Error names the error value.
func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "nbd: operation not permitted (EPERM)"
	case EIO:
		return "nbd: input/output error (EIO)"
	case ENOMEM:
		return "nbd: cannot allocate memory (ENOMEM)"
	case EINVAL:
		return "nbd: invalid argument (EINVAL)"
	case ENOSPC:
		return "nbd: no space left on device (ENOSPC)"
	case EOVERFLOW:
		return "nbd: value too large (EOVERFLOW)"
	case ENOTSUP:
		return "nbd: operation not supported (ENOTSUP)"
	case ESHUTDOWN:
		return "nbd: server shutting down (ESHUTDOWN)"
	}
	return fmt.Sprintf("nbd: error %d", uint32(e))
}

// RequestSize is the size of a request header on the wire.
const RequestSize = 28

// ErrBadMagic is returned when a request does not start with the NBD request
// magic; the server ends the connection.
var ErrBadMagic = errors.New("nbd: bad request magic")

// Request is the header of a transmission-phase request. A write's payload
// follows it on the wire.
type Request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// UnmarshalBinary parses a request header of RequestSize bytes.
func (r *Request) UnmarshalBinary(b []byte) error {
	if len(b) != RequestSize {
		return fmt.Errorf("parse request: %d bytes, want %d", len(b), RequestSize)
	}
	if binary.BigEndian.Uint32(b[0:4]) != magicRequest {
		return ErrBadMagic
	}
	r.Flags = binary.BigEndian.Uint16(b[4:6])
	r.Type = binary.BigEndian.Uint16(b[6:8])
	r.Cookie = binary.BigEndian.Uint64(b[8:16])
	r.Offset = binary.BigEndian.Uint64(b[16:24])
	r.Length = binary.BigEndian.Uint32(b[24:28])
	return nil
}

// AppendBinary appends the request header's wire form to b.
func (r *Request) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, r.Flags)
	b = binary.BigEndian.AppendUint16(b, r.Type)
	b = binary.BigEndian.AppendUint64(b, r.Cookie)
	b = binary.BigEndian.AppendUint64(b, r.Offset)
	b = binary.BigEndian.AppendUint32(b, r.Length)
	return b, nil
}

var (
	noDeadline   time.Time
	pastDeadline = time.Unix(1, 0)
)
