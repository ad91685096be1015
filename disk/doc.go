// Package disk owns tandem's local block stores: a raw file or block device
// (File) and, built on it, the wrappers that add behaviour with the same
// method set (the journaling tap, the test-failover overlay).
//
// A File satisfies nbd.Backend and the optional nbd interfaces (Flusher,
// Trimmer, Zeroer, Extenter, MultiConner); it knows nothing of the NBD wire
// protocol or of journals.
//
// Concurrency: every method of File is safe for concurrent use. Reads and
// writes use positional I/O (pread/pwrite) and never share a file offset;
// Close must not race with other calls.
package disk
