// Package replicationtest provides in-memory implementations of
// replication.Source and replication.Sink and a TCP proxy that drops
// connections, for tests of the replication engines in the manner of
// httptest. MemSource is also a model of what the daemon's journaling tap
// must do: journal before the store, keep unacknowledged records up to a
// limit, then mark dropped records' ranges dirty until acknowledged.
//
// Every type is safe for concurrent use.
package replicationtest
