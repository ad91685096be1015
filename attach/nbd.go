package attach

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel's NBD interfaces (linux/nbd.h, linux/nbd-netlink.h).
const (
	nbdFamily        = "nbd"
	nbdGenlVersion   = 1
	nbdCmdConnect    = 1
	nbdCmdDisconnect = 2

	nbdAttrIndex           = 1
	nbdAttrSizeBytes       = 2
	nbdAttrBlockSizeBytes  = 3
	nbdAttrTimeout         = 4
	nbdAttrServerFlags     = 5
	nbdAttrClientFlags     = 6
	nbdAttrSockets         = 7
	nbdAttrDeadConnTimeout = 8
	nbdSockItem            = 1
	nbdSockFD              = 1

	nbdCFlagDestroyOnDisconnect = 1

	nbdSetSock       = 0xab00
	nbdSetBlksize    = 0xab01
	nbdDoIt          = 0xab03
	nbdClearSock     = 0xab04
	nbdClearQue      = 0xab05
	nbdSetSizeBlocks = 0xab07
	nbdDisconnect    = 0xab08
	nbdSetTimeout    = 0xab09
	nbdSetFlags      = 0xab0a
)

// NBDOptions say how a connection becomes a device. The zero value lets
// the kernel pick a device, with 512-byte blocks and its default timeout.
type NBDOptions struct {
	// Device is the /dev/nbdN to use; empty picks a free one.
	Device string
	// BlockSize is the device's block size: 512 (default) to 4096.
	BlockSize uint32
	// Timeout fails a request the server has not answered in time; zero
	// keeps the kernel's default.
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel waits for a reconnect when
	// the connection dies before failing requests; zero fails at once.
	DeadConnTimeout time.Duration
}

// NBD connects a kernel NBD device to a server over conn, whose NBD
// handshake is complete (the export has size bytes and the transmission
// flags flags), and returns the device's path, /dev/nbdN.
//
// It loads the nbd module first when the driver is not present. On a
// kernel that has no NBD client it returns an error wrapping
// ErrNoKernelNBD that says so and points to --loop.
//
// NBD takes conn over: the kernel keeps the socket, and NBD closes conn
// (a *net.TCPConn or *net.UnixConn, or anything with a socket fd) before
// it returns, whether it succeeds or not. The device is connected through
// the generic netlink "nbd" family, and stays connected after the process
// ends, until Detach. On a kernel without the netlink interface the ioctl
// interface is used instead; its device lives only as long as the calling
// process.
func NBD(ctx context.Context, conn net.Conn, size int64, flags uint16, opts NBDOptions) (string, error) {
	defer conn.Close()
	if opts.BlockSize == 0 {
		opts.BlockSize = 512
	}
	if opts.BlockSize < 512 || opts.BlockSize > 4096 || opts.BlockSize&(opts.BlockSize-1) != 0 {
		return "", fmt.Errorf("nbd attach: block size %d: %w", opts.BlockSize, unix.EINVAL)
	}
	if size <= 0 {
		return "", fmt.Errorf("nbd attach: size %d: %w", size, unix.EINVAL)
	}
	index := -1
	if opts.Device != "" {
		n, err := nbdIndex(opts.Device)
		if err != nil {
			return "", fmt.Errorf("nbd attach: %w", err)
		}
		index = n
	}
	if err := loadNBDModule(ctx); err != nil {
		return "", fmt.Errorf("nbd attach: %w", err)
	}
	fd, err := socketFD(conn)
	if err != nil {
		return "", fmt.Errorf("nbd attach: %w", err)
	}
	defer unix.Close(fd)

	dev, err := nbdConnectNetlink(ctx, fd, index, size, flags, opts)
	if errors.Is(err, unix.ENOENT) { // no "nbd" netlink family
		dev, err = nbdConnectIoctl(ctx, fd, index, size, flags, opts)
	}
	if err != nil {
		return "", fmt.Errorf("nbd attach: %w", err)
	}
	return dev, nil
}

// socketFD returns a blocking duplicate of conn's socket descriptor.
func socketFD(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("connection %T has no socket descriptor", conn)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup socket: %w", derr)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("socket blocking: %w", err)
	}
	return fd, nil
}

// nbdConnectAttrs are the attributes of NBD_CMD_CONNECT.
func nbdConnectAttrs(fd, index int, size int64, flags uint16, opts NBDOptions) []nlAttr {
	attrs := []nlAttr{
		u64Attr(nbdAttrSizeBytes, uint64(size)),
		u64Attr(nbdAttrBlockSizeBytes, uint64(opts.BlockSize)),
		u64Attr(nbdAttrServerFlags, uint64(flags)),
		u64Attr(nbdAttrClientFlags, nbdCFlagDestroyOnDisconnect),
		nestedAttr(nbdAttrSockets, nestedAttr(nbdSockItem, u32Attr(nbdSockFD, uint32(fd)))),
	}
	if index >= 0 {
		attrs = append(attrs, u32Attr(nbdAttrIndex, uint32(index)))
	}
	if opts.Timeout > 0 {
		attrs = append(attrs, u64Attr(nbdAttrTimeout, uint64(max(opts.Timeout/time.Second, 1))))
	}
	if opts.DeadConnTimeout > 0 {
		attrs = append(attrs, u64Attr(nbdAttrDeadConnTimeout, uint64(max(opts.DeadConnTimeout/time.Second, 1))))
	}
	return attrs
}

func nbdConnectNetlink(ctx context.Context, fd, index int, size int64, flags uint16, opts NBDOptions) (string, error) {
	c, err := dialGenl()
	if err != nil {
		return "", err
	}
	defer c.Close()
	family, err := c.resolveFamily(ctx, nbdFamily)
	if err != nil {
		return "", err
	}
	attrs, err := c.request(ctx, family, nbdCmdConnect, nbdGenlVersion, nbdConnectAttrs(fd, index, size, flags, opts))
	if err != nil {
		return "", fmt.Errorf("NBD_CMD_CONNECT: %w", err)
	}
	v, ok := findAttr(attrs, nbdAttrIndex)
	if !ok || len(v) < 4 {
		if index >= 0 {
			return "/dev/nbd" + strconv.Itoa(index), nil
		}
		return "", fmt.Errorf("NBD_CMD_CONNECT: reply without a device index: %w", errBadNetlink)
	}
	return "/dev/nbd" + strconv.Itoa(int(binary.NativeEndian.Uint32(v))), nil
}

// nbdConnectIoctl is the interface of kernels before 4.12: configure with
// ioctls, then NBD_DO_IT, which serves until disconnect, on a goroutine.
func nbdConnectIoctl(ctx context.Context, fd, index int, size int64, flags uint16, opts NBDOptions) (string, error) {
	if index < 0 {
		n, err := freeNBDIndex()
		if err != nil {
			return "", err
		}
		index = n
	}
	dev := "/dev/nbd" + strconv.Itoa(index)
	dfd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", dev, err)
	}
	set := func(name string, req uint, arg int) error {
		if err := unix.IoctlSetInt(dfd, req, arg); err != nil {
			return fmt.Errorf("%s %s: %w", dev, name, err)
		}
		return nil
	}
	err = set("NBD_SET_BLKSIZE", nbdSetBlksize, int(opts.BlockSize))
	if err == nil {
		err = set("NBD_SET_SIZE_BLOCKS", nbdSetSizeBlocks, int(size/int64(opts.BlockSize)))
	}
	if err == nil {
		err = set("NBD_SET_FLAGS", nbdSetFlags, int(flags))
	}
	if err == nil && opts.Timeout > 0 {
		err = set("NBD_SET_TIMEOUT", nbdSetTimeout, int(max(opts.Timeout/time.Second, 1)))
	}
	if err == nil {
		err = set("NBD_SET_SOCK", nbdSetSock, fd)
	}
	if err != nil {
		unix.IoctlSetInt(dfd, nbdClearSock, 0)
		unix.Close(dfd)
		return "", err
	}
	done := make(chan error, 1)
	go func() {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(dfd), nbdDoIt, 0)
		unix.IoctlSetInt(dfd, nbdClearQue, 0)
		unix.IoctlSetInt(dfd, nbdClearSock, 0)
		unix.Close(dfd)
		if e != 0 {
			done <- e
		}
		close(done)
	}()
	pid := "/sys/block/nbd" + strconv.Itoa(index) + "/pid"
	for {
		if _, err := os.Stat(pid); err == nil {
			return dev, nil
		}
		select {
		case err := <-done:
			return "", fmt.Errorf("%s NBD_DO_IT: %w", dev, err)
		case <-ctx.Done():
			detachNBDIoctl(dev)
			return "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// freeNBDIndex finds an NBD device with no connection.
func freeNBDIndex() (int, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return -1, err
	}
	for _, e := range ents {
		n, err := nbdIndex(e.Name())
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join("/sys/block", e.Name(), "pid")); errors.Is(err, os.ErrNotExist) {
			return n, nil
		}
	}
	return -1, errors.New("no free /dev/nbdN")
}

// nbdIndex is N of /dev/nbdN or nbdN.
func nbdIndex(dev string) (int, error) {
	base := filepath.Base(dev)
	n, err := strconv.Atoi(strings.TrimPrefix(base, "nbd"))
	if err != nil || !strings.HasPrefix(base, "nbd") || n < 0 {
		return -1, fmt.Errorf("%s is not an NBD device", dev)
	}
	return n, nil
}

// detachNBD disconnects /dev/nbdN: NBD_CMD_DISCONNECT, or the ioctls.
func detachNBD(ctx context.Context, dev string) error {
	n, err := nbdIndex(dev)
	if err != nil {
		return fmt.Errorf("detach %s: %w", dev, ErrNotAttached)
	}
	if _, err := os.Stat("/sys/block/nbd" + strconv.Itoa(n)); err != nil {
		return fmt.Errorf("detach %s: %w", dev, ErrNotAttached)
	}
	c, err := dialGenl()
	if err == nil {
		defer c.Close()
		var family uint16
		family, err = c.resolveFamily(ctx, nbdFamily)
		if err == nil {
			_, err = c.request(ctx, family, nbdCmdDisconnect, nbdGenlVersion, []nlAttr{u32Attr(nbdAttrIndex, uint32(n))})
			if err != nil {
				return fmt.Errorf("detach %s: NBD_CMD_DISCONNECT: %w", dev, err)
			}
			return nil
		}
	}
	if err := detachNBDIoctl(dev); err != nil {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

func detachNBDIoctl(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, nbdDisconnect, 0); err != nil {
		return fmt.Errorf("NBD_DISCONNECT: %w", err)
	}
	unix.IoctlSetInt(fd, nbdClearSock, 0)
	return nil
}
