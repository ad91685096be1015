// Package replication ships a disk's journal from the primary site to the
// secondary site: the versioned wire protocol (see PROTOCOL.md), the
// Sender that runs on the primary for each protected disk, and the Server
// that accepts connections on the secondary and drives one receiver per
// replica disk.
//
// The package owns the protocol and the engines, not the storage on either
// side: the primary's journal and store are reached through the Source
// interface and the secondary's journal, replica store and staging area
// through the Sink interface, both implemented by the daemon (package
// appliance) and, in memory, by replicationtest. It does not know how
// connections are authenticated: the daemon hands it net.Conns that are
// already mutual TLS 1.3 and the name of the peer site.
//
// What the protocol guarantees: records reach the secondary in sequence
// order with no gap and no duplicate, each one's chained checksum is
// verified before anything is applied, an acknowledgement names only what
// the Sink reported durable, and after any fault (a dropped link, a
// restarted primary or secondary) shipping resumes from the secondary's
// durable head. Initial sync and resync copy regions and then records from
// the sync's base; the secondary's consistent point moves only when the
// copy is complete and the records through the head at the copy's end are
// durable.
//
// Concurrency: a Sender owns its connection loop (which runs the writer of
// the current connection and starts an acknowledgement reader for it) and
// a monitor that samples throughput and raises the RPO alert, all started
// by Open and stopped by Close; its Status, WaitAcked and Verify methods
// are safe to call from any goroutine. The Server runs one goroutine per connection and
// lets one connection at a time drive a given replica disk: a new
// connection for the same disk closes the old one and waits for it to end.
// Source and Sink implementations must be safe for the calls described on
// each method; the Sink is called from one goroutine at a time.
package replication
