// Package journal owns tandem's change log: per disk, a dense,
// hash-chained sequence of records (write, zero, trim, marker) kept in
// the log's own segment files, with one badger database per site for the
// small things (log names, released bases, consumers' holds, sync marks,
// metadata). It is the only package that imports badger. It knows
// nothing of NBD, block stores or replication: it stores, orders,
// verifies and releases records.
//
// # Records
//
// A Record's binary form (AppendBinary, DecodeRecord) is both what the
// segments store and what replication ships. Sum = ChainSum(PrevSum,
// record): an xxhash64 over the previous record's sum, the header and the
// data, so a damaged, missing or reordered record is detected, not only a
// flipped bit. Verify checks one link; ReadFrom checks every link it
// reads.
//
// # Segments
//
// A log's records lie back to back in DIR/segments/<log id>/<first
// seq>.seg; a new segment starts when the current one would pass
// Options.SegmentSize. Segments are self-describing, so they are the log:
// on the first Store.Log of a process the log's segments are scanned from
// the released base, every record verified against the one before, and
// the in-memory index (seq → segment, offset, length, sum) rebuilt. The
// index costs about 40 bytes per unreleased record and no badger write.
// Segment data is read with pread and written with pwrite, never mapped:
// it lives in the page cache, not in the process's resident set.
//
// # Appending
//
// Append assigns Seq, Time and sums and reserves the record's offset under
// the log's lock, in seq order; the write itself, one pwritev of header
// and caller's data, runs outside the lock, concurrently with other
// appends. Pending.Wait returns when every record up to and including its
// seq is written (a contiguous watermark, Log.Committed), so after kill -9
// no acknowledged record sits behind a hole. Log.Sync waits for that
// watermark to pass the records appended before it, then one syncer
// goroutine fdatasyncs every segment written since the previous round
// (and badger, when metadata changed) for all Sync calls that arrived
// meanwhile, and afterwards records the log's sync mark in badger without
// waiting. A failed write (ENOSPC, EIO) fails its record and every later
// in-flight one, and the log rolls back to its watermark: the chain never
// has a gap.
//
// # Recovery
//
// The scan stops at the first record that is missing, torn or fails its
// sum, truncates the segment there and retires later segments. A stop at
// or below the sync mark is damage: Recovery.Cut, logged at Error. A stop
// past it is the tail of writes still in flight when the process died
// (they were never acknowledged as surviving kill -9, or were not synced
// before a power cut): Recovery.Torn, logged at Warn. Released segments
// are reused (see below); their old bytes never pass the scan, which
// wants the next seq chained to the sum before it.
//
// # Key layout
//
// Every badger key starts with a one-byte tag; integers are big-endian.
//
//	n <name>                          -> log id (uint32)
//	i                                 -> next log id (uint32)
//	l <id:4> b                        -> last released seq:8, its Sum:8
//	l <id:4> w                        -> sync mark: seq:8 synced to segments
//	l <id:4> h <consumer>             -> hold seq:8
//	l <id:4> m <key>                  -> metadata value
//	l <id:4> x <region:8> <seq:8>     -> reserved: index from a region of
//	                                     the disk to the records touching it
//
// A per-disk id instead of the name keeps keys short, names the segment
// directory and lets DropLog delete a log's keys by prefix after
// unlinking its name.
//
// # Holds, release and space
//
// Consumers ("apply", "replication", …) SetHold the seq up to which they
// no longer need records; records at or below the lowest hold are
// released, the base (last released seq and sum) persisted first so that
// the chain of the remaining records stays verifiable. A segment all of
// whose records are released is renamed into DIR/segments/free (up to
// Options.FreeSegments, by default as many as one log may fill, else
// deleted) and reused by the next new segment: overwriting a reused file
// writes into page-cache pages and file-system blocks that already exist,
// where a new file must get both, which measured 3-5 times the cost of
// the copy on a virtual machine whose freed memory goes back to the host.
// The pool is deleted when an append would otherwise be refused for
// space. A
// log without holds keeps everything. Options.MaxBytes bounds each log's
// unreleased bytes: Append fails with ErrFull rather than grow past it.
//
// # A full file system
//
// Segment writes return ENOSPC like any write, but badger writes its
// memtable log through mmap into sparse files, where a page that cannot
// be allocated raises SIGBUS. So the journal keeps Options.MinFreeBytes
// free: appends fail with an error wrapping syscall.ENOSPC below it
// (holds and metadata may use half of it, so that checkpoints can still
// release records), and nothing that was committed is touched.
//
// # Concurrency
//
// Store and Log are safe for concurrent use. Lock order: Store.mu, then
// Log.mu, then the store's sync and pool locks. No lock is held across a
// segment write or read; a reader pins the segments it reads so that a
// release meanwhile does not retire them. Close waits for the appends in
// flight, syncs the segments and records the sync marks before closing
// badger.
package journal
