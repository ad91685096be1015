// Package attach makes files and NBD connections local block devices:
// loop devices (LOOP_CONFIGURE through /dev/loop-control, with the
// LOOP_SET_FD fallback for older kernels) and the kernel's NBD client
// (/dev/nbdN, connected through the generic netlink "nbd" family, with
// the ioctl interface as fallback, after loading the nbd module when it is
// not loaded yet).
//
// attach owns only the kernel interfaces: it does not know what a disk,
// a FUSE mount or the NBD handshake is. The daemon hands it a path (a file
// of a fusefs mount) or a connected socket whose handshake is done.
//
// # Concurrency
//
// The functions are safe to call concurrently: the kernel hands out free
// devices atomically and attach retries when another caller took the same
// one first. They take a context, checked between steps; a kernel call in
// progress is not interrupted.
package attach
