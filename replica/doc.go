// Package replica adapts a site's disks to the replication engines: on the
// primary, Source presents a protected disk's journaling tap and journal
// as a replication.Source; on the secondary, Disk keeps a replica disk (a
// raw sparse store at its consistent point, the retention journal and a
// staging area for syncs) as a replication.Sink, and doubles as the
// read-only NBD backend of the export NAME@latest.
//
// It owns the replication hold on a primary's journal (Protect, Unprotect)
// and every file and journal key of a replica under its directory. It
// knows nothing of the wire protocol, TLS, NBD servers or the daemon's
// configuration.
//
// # Primary
//
// While a disk is protected its journal carries the hold HoldReplication
// at the secondary's acknowledged consistent point, so records the
// secondary may still need are never released (and the tap skips the
// store checkpoints that would free nothing behind it); while it is not,
// the hold does not exist and the journal is bounded by the tap's
// checkpoints only.
// When the journal fills up the tap tracks dirty regions instead; Source
// then reports NeedsResync and refuses to stream records past the gap, and
// StartSync appends a marker record, leaves overflow mode and plans the
// dirty regions plus the ranges of the records the secondary lacks.
// SyncCommitted clears the dirty marks a committed plan covered. The
// marker makes every sync's Base a sequence number that the secondary can
// only reach by committing that sync, so Acked passing a plan's Base
// proves the same (and saves a resync when the acknowledgement naming the
// sync was lost with a connection).
//
// # Use by the daemon
//
// Protect a disk: Protect(ctx, log), then NewSource(tap, log, opts), then
// replication.NewSender with the Source, then Sender.Open. At daemon start
// for a protected disk (Protected(log) is true): NewTap, NewSource, Sender.
// Unprotect: Sender.Close, then Unprotect(ctx, tap, log). For a replica
// disk: Open(ctx, dir, log, size, opts) at start or when the replica is
// created, hand the Disk to the replication Server's Lookup, export it as
// NAME@latest (read-only), call Expire from the retention policy (or
// Release, to a seq), and Close it once the Server no longer routes to
// it, before closing the journal.
//
// # Secondary
//
// Files in the replica's directory:
//
//	replica.img   the replica store: the disk at the consistent point
//	staging.img   regions of the sync in progress (absent otherwise)
//
// Journal metadata under the replica's log: "replica.state" (the
// persisted state: initialised, the point the store durably holds, the
// sync in progress and its commit intent) and "replica.staged.<id>.<n>"
// (the staged regions of sync id, one chunk per SyncProgress). Records are
// applied to the store in order as they arrive outside a sync; the store
// is fdatasynced and the applied point persisted at checkpoints, which
// run in the background while the next records are applied, and Open
// replays the records after it, so the journal is the store's write-ahead
// log. A sync stages its regions in staging.img and keeps its records in
// the journal unapplied; CommitSync persists an intent, copies the staged
// regions into the store (or, for a full sync, renames the staging file
// over it), applies the records, fdatasyncs and clears the intent. Open
// redoes an interrupted commit; every step is idempotent. A sync cannot
// continue the journal's chain (its Base follows records the replica never
// got), so BeginSync releases the kept records and rebases the journal on
// the Base: the retention window restarts at each sync.
//
// # Concurrency
//
// Source is safe for concurrent use. Disk's Sink methods are called by one
// receiver at a time (as replication.Sink requires); State, Release,
// ReadConsistent, CheckChain and the NBD methods (ReadAt, Extents) may be
// called concurrently with them and with each other. Readers take a read
// lock on the store; applying records and committing a sync take it
// exclusively, so a reader sees the replica at a consistent point, never
// half a record or half a sync.
package replica
