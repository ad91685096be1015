package nbd

import (
	"context"
	"io"
	"os"
)

// Backend is the storage behind one export. It is all a backend must
// implement; everything else is optional and found by type assertion, and
// the server advertises a capability to clients only when the backend has it.
//
// The server checks every request against Size before calling the backend,
// so ReadAt and WriteAt are only called with ranges inside [0, Size).
// Backends must be safe for concurrent use: requests on one connection and
// on several connections are served in parallel.
//
// WriteAt must not retain p after it returns.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Size is the export's size in bytes. It does not change while a
	// connection is open.
	Size() int64
}

// Flusher is implemented by backends that can make completed writes durable.
// When absent, the server does not advertise NBD_FLAG_SEND_FLUSH or
// NBD_FLAG_SEND_FUA.
type Flusher interface {
	// Flush returns once every write that completed before it was called
	// is durable.
	Flush(ctx context.Context) error
}

// FUAWriter is implemented by backends that can make a single write durable
// more cheaply than a write followed by a Flush. When a Flusher lacks it, the
// server serves NBD_CMD_FLAG_FUA as WriteAt followed by Flush.
type FUAWriter interface {
	// WriteAtFUA writes p at off and returns once it is durable.
	WriteAtFUA(p []byte, off int64) (int, error)
}

// Trimmer is implemented by backends that can discard a range. When absent,
// NBD_FLAG_SEND_TRIM is not advertised.
type Trimmer interface {
	// Trim hints that the range is no longer needed. Reads of a trimmed
	// range may return old data or zeroes.
	Trim(off, length int64) error
}

// Zeroer is implemented by backends that can write zeroes without a data
// transfer. When absent, the server still serves NBD_CMD_WRITE_ZEROES by
// writing a zero buffer, but cannot honour NBD_CMD_FLAG_FAST_ZERO.
type Zeroer interface {
	// Zero makes the range read as zeroes. With mayTrim the backend may
	// deallocate the range (punch a hole) instead of writing zeroes.
	Zero(off, length int64, mayTrim bool) error
}

// Extent is one run of the block-status map.
type Extent struct {
	Length int64
	// Hole and Zero map to NBD_STATE_HOLE and NBD_STATE_ZERO of the
	// base:allocation meta context.
	Hole bool
	Zero bool
}

// Extenter is implemented by backends that know which ranges hold data.
// When absent, base:allocation reports the whole export as allocated data.
type Extenter interface {
	// Extents describes [off, off+length). It returns at least one extent
	// and may describe less than length (the client asks again), never more.
	Extents(off, length int64) ([]Extent, error)
}

// MultiConner is implemented by backends whose flushes are visible across
// connections (a flush on one connection makes writes completed on every
// connection durable), which lets the server advertise NBD_FLAG_CAN_MULTI_CONN.
type MultiConner interface {
	CanMultiConn() bool
}

// Exporter resolves the export names clients ask for. The server opens an
// export only when the client has completed option haggling with
// NBD_OPT_GO or NBD_OPT_EXPORT_NAME, never during NBD_OPT_INFO or LIST.
type Exporter interface {
	// Open returns the backend for name. The Export's Close, when set, is
	// called when the connection ends. An error wrapping ErrUnknownExport
	// is reported to the client as NBD_REP_ERR_UNKNOWN.
	Open(ctx context.Context, name string) (*Export, error)
	// Info describes name without opening it for I/O (NBD_OPT_INFO).
	Info(ctx context.Context, name string) (ExportInfo, error)
	// List returns the export names for NBD_OPT_LIST.
	List(ctx context.Context) ([]ExportInfo, error)
}

// ExportInfo describes an export to a client.
type ExportInfo struct {
	Name        string
	Description string
	Size        int64
	ReadOnly    bool
	// Flags, when set by Exporter.Info, are the transmission flags
	// NBD_OPT_INFO reports without opening the export (see FlagsFor).
	// When zero, INFO reports only FlagHasFlags, FlagReadOnly and
	// FlagSendCache. Open's flags are always worked out from the backend.
	Flags uint16
}

// Export is an opened export.
type Export struct {
	ExportInfo
	Backend Backend
	// Close, when set, is called once when the connection using the export ends.
	Close func() error
}

// FileRanger is implemented by backends whose bytes for a range are, as
// they stand, the bytes of an open file at some offset (a raw file or
// device store), and for which writing that file there is the same as
// WriteAt. On plaintext connections the server then sends large reads with
// sendfile(2), from the page cache to the socket, and splices large writes
// from the socket into the file, without copying them through user space.
// The file is read when the reply is sent. A wrapper that changes what
// reads return or what a write does (an overlay, a journal, a read-only
// view) must not implement it.
type FileRanger interface {
	// FileRange returns the file and offset holding [off, off+length), or
	// ok false to have the range read through ReadAt.
	FileRange(off, length int64) (f *os.File, fileOff int64, ok bool)
}
