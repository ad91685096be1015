// Package journal owns tandem's change log: one badger database per site
// holding, per disk, a dense, hash-chained sequence of records (write,
// zero, trim, marker), the consumers' holds on it and a little metadata.
// It is the only package that imports badger. It knows nothing of NBD,
// block stores or replication: it stores, orders, verifies and releases
// records.
//
// # Records
//
// A Record's binary form (AppendBinary, DecodeRecord) is both what badger
// stores and what replication ships. Sum = ChainSum(PrevSum, record): an
// xxhash64 over the previous record's sum, the header and the data, so a
// damaged, missing or reordered record is detected, not only a flipped
// bit. Verify checks one link; ReadFrom checks every link it reads.
//
// # Appending: group commit
//
// Append assigns Seq, Time and sums under the log's lock and queues the
// encoded record; one committer goroutine per Store writes everything
// that queued up while the previous batch was being written as one badger
// transaction (many writes, one batch; records of all logs share it).
// Pending.Wait returns when the record's batch is committed: it then
// survives kill -9 of the process, since badger writes through the page
// cache. Log.Sync returns when everything appended before it also
// survives a power cut; one syncer goroutine serves all Sync calls that
// arrive while the previous badger Sync ran with a single badger Sync.
// When a batch fails to commit (ENOSPC, EIO), its records and every later
// queued record of the same logs fail, and each log rolls back to its last
// committed record: the chain never has a gap.
//
// # Key layout
//
// Every key starts with a one-byte tag; integers are big-endian so that
// badger's key order is numeric order.
//
//	n <name>                          -> log id (uint32)
//	i                                 -> next log id (uint32)
//	l <id:4> r <seq:8>                -> encoded Record
//	l <id:4> b                        -> last released seq:8, its Sum:8
//	l <id:4> h <consumer>             -> hold seq:8
//	l <id:4> m <key>                  -> metadata value
//	l <id:4> x <region:8> <seq:8>     -> reserved: index from a region of
//	                                     the disk to the records touching it
//	p <n:8>                           -> padding, deleted at once (reclaim)
//
// Reading from a sequence onwards is one badger seek to l<id>r<seq> and a
// forward scan. A per-disk id instead of the name keeps keys short and
// lets DropLog delete a log's keys by prefix after unlinking its name.
// The block index (x) is reserved: a point-in-time view of a region scans
// l<id>x<region> for the seqs that touched it and reads only those.
//
// # Holds, release and space
//
// Consumers ("apply", "replication", …) SetHold the seq up to which they
// no longer need records; records at or below the lowest hold are
// released (deleted), the base (last released seq and sum) persisted
// first so that the chain of the remaining records stays verifiable. A
// log without holds keeps everything. Options.MaxBytes bounds each log's
// unreleased bytes: Append fails with ErrFull rather than grow past it.
// Record data lives in badger's value log (Options.ValueThreshold), and a
// GC loop rewrites (or just deletes) value-log files that released
// records turned mostly into garbage, so a steady state holds a bounded
// footprint. Badger learns what is garbage only from compactions, which
// follow memtable flushes; since a journal's memtable holds only keys and
// value pointers, the GC loop forces a flush (padding entries under the
// p tag, deleted at once) after every Options.ReclaimBytes released.
//
// Memory: badger maps its files; the value-log pages written since a file
// was created stay in the process's resident set (as shared page cache)
// until GC deletes the file. Resident memory is therefore about the
// memtables and caches (Options) plus the value-log files not yet
// reclaimed, which prompt releases keep near the unreleased bytes.
//
// # A full file system
//
// Badger writes its logs through mmap into sparse files, where a page
// that cannot be allocated raises SIGBUS rather than returning ENOSPC. So
// the journal keeps Options.MinFreeBytes free: appends fail with an error
// wrapping syscall.ENOSPC below it (holds and metadata may use half of
// it, so that checkpoints can still release records), and nothing that
// was committed is touched.
//
// # Crash safety
//
// badger commits a transaction atomically. On the first Store.Log of a
// process the whole unreleased chain is read and verified; the first
// torn, missing or corrupt record and everything after it are cut and
// logged at Error (Log.Recovery reports it), never served.
//
// # Concurrency
//
// Store and Log are safe for concurrent use. Lock order is Log before the
// store's queue; the committer and syncer never hold a Log's lock while
// calling badger. Close drains the queue before closing badger.
package journal
