// Package nbd owns the Network Block Device protocol: a fixed-newstyle
// server over any Backend, and a small client for tests and kernel attach.
//
// It speaks only the protocol and knows nothing of journals, disks or the
// appliance. A Backend is io.ReaderAt + io.WriterAt + Size(); flush, FUA,
// trim, zero, extents and multi-connection safety are optional interfaces
// found by type assertion, and the server advertises only what the backend
// has. The server checks every request's bounds, length and flags before a
// backend sees it, so backends never get out-of-range calls.
//
// What the server speaks: NBD_OPT_GO, INFO, LIST, EXPORT_NAME, ABORT,
// STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT (base:allocation),
// STARTTLS (per listener, optional or required); NBD_INFO_BLOCK_SIZE;
// NBD_CMD_READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO),
// CACHE, BLOCK_STATUS and DISC; simple and structured replies.
//
// Concurrency: a Server is safe for concurrent use and serves any number of
// listeners. Each connection has one goroutine reading requests. Requests
// the backend has lately served quickly (page-cache reads and writes) go in
// order to one worker goroutine, overlapping with the reading; slower ones
// (flushes, FUA, a backend waiting on a disk or a remote journal) go to a
// pool of workers, started as needed up to ServerOptions.MaxInFlight (the
// most requests in flight) and kept until the connection ends. A new
// connection presumes every kind slow until it has timed some. Replies
// are written in completion order (the protocol allows any), batched into
// one writev when several are ready. Backends must therefore be safe for
// concurrent use. On plaintext connections, backends that are a plain file
// (FileRanger) have large reads sent with sendfile and large writes spliced
// from the socket. An export is opened only when a client completes the
// handshake with NBD_OPT_GO or NBD_OPT_EXPORT_NAME, and closed when that
// connection ends. Malformed input ends only the connection that sent it.
//
// A Client serialises its requests and is safe for concurrent use.
package nbd
