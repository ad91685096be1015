// Package appliance is the tandem daemon: it owns a site's data directory,
// opens the journal and the disks, serves them over NBD and FUSE, answers the
// management API on a unix socket, and drives replication, failover and
// plans.
//
// Layout of a data directory:
//
//	config.json        the site's configuration (written by init)
//	pki/               the site's CA, certificate and paired peers
//	journal/           the badger change log shared by every disk
//	disks/NAME.json    a disk's metadata (size, backing store, role)
//	disks/NAME.img     a disk's backing store when no --from was given
//	api.sock, nbd.sock the default unix sockets
//	lock               held (flock) by the one daemon serving the directory
//
// The API is HTTP/1.1 with JSON bodies over the unix socket DATA/api.sock
// (see api.go for the routes). Errors are {"error": "..."} with a 4xx or 5xx
// status.
//
// Concurrency: a Daemon is safe for concurrent use; its disk table is guarded
// by one mutex, and each disk's data path is the journaling tap's, which is
// concurrent on its own.
package appliance
