// Package fusefs presents block volumes as regular files in a FUSE mount
// (go-fuse v2), so that tools on the appliance, and loop devices attached
// to the files, see protected disks, point-in-time views and test-failover
// overlays as ordinary files:
//
//	DIR/disks/NAME      writable disks of this site
//	DIR/views/NAME@ID   read-only point-in-time views
//	DIR/test/NAME       test-failover overlays
//
// fusefs owns the mount, the mapping of file operations onto a [File]
// (read, write, fsync and close to Flush, fallocate to Trim and Zero,
// SEEK_DATA and SEEK_HOLE to Extents) and the clearing of a stale mount left
// by a killed process. It knows nothing of NBD, journals or disks: the
// daemon hands it a [Source] that says which files exist, and every write
// goes to the File the source returned, so a journaling wrapper sees exactly
// what the kernel wrote.
//
// # Concurrency
//
// The kernel sends requests in parallel and go-fuse serves each on its own
// goroutine, so a File's methods are called concurrently, also for
// overlapping ranges; Files must be safe for that, as nbd backends are.
// A Source is asked from many goroutines at once. [FS] methods are safe for
// concurrent use; Unmount may be called once.
package fusefs
