package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LoopOptions say how a file is attached as a loop device. The zero value
// attaches read-write with buffered I/O.
type LoopOptions struct {
	// ReadOnly attaches the device read-only (and opens the file so).
	ReadOnly bool
	// DirectIO makes the loop device read and write the file with
	// O_DIRECT, so its blocks are not cached twice (in the device's and
	// in the file's page cache). A file that cannot do direct I/O makes
	// Loop fail.
	DirectIO bool
	// AutoClear detaches the device when its last opener closes it. Use
	// it with LoopFile, whose returned file keeps the device until it is
	// closed. With Loop the device goes away as soon as Loop closes its
	// own descriptor, unless someone else has it open: a device attached
	// for later use by another process (tandem attach prints it and
	// exits) must not set it.
	AutoClear bool
	// BlockSize is the device's logical block size: 512 (default), 1024,
	// 2048 or 4096.
	BlockSize uint32
}

// ErrNotAttached is returned by Detach for a device that is neither a
// loop device with a backing file nor an NBD device.
var ErrNotAttached = errors.New("attach: device not attached")

// LoopDevice describes an attached loop device, from sysfs.
type LoopDevice struct {
	Dev         string // /dev/loopN
	BackingFile string
	ReadOnly    bool
	AutoClear   bool
	DirectIO    bool
	Size        int64 // bytes
}

// Loop attaches the file at path as a free loop device and returns its
// path (/dev/loopN); the device stays attached until Detach. It takes a free device from /dev/loop-control
// (LOOP_CTL_GET_FREE) and configures it in one step with LOOP_CONFIGURE;
// on kernels without it (before 5.8), with LOOP_SET_FD,
// LOOP_SET_STATUS64 and LOOP_SET_DIRECT_IO. When another process takes
// the same device first, Loop tries the next free one.
func Loop(ctx context.Context, path string, opts LoopOptions) (string, error) {
	f, err := LoopFile(ctx, path, opts)
	if err != nil {
		return "", err
	}
	dev := f.Name()
	f.Close()
	return dev, nil
}

// LoopFile is Loop returning the loop device opened (read-write, or
// read-only with opts.ReadOnly); its Name is the device path. With
// opts.AutoClear, closing it (when nobody else has the device open)
// detaches the device, so a process that dies cannot leave it behind.
func LoopFile(ctx context.Context, path string, opts LoopOptions) (*os.File, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = 512
	}
	switch opts.BlockSize {
	case 512, 1024, 2048, 4096:
	default:
		return nil, fmt.Errorf("loop attach %s: block size %d: %w", path, opts.BlockSize, unix.EINVAL)
	}
	mode := unix.O_RDWR
	if opts.ReadOnly {
		mode = unix.O_RDONLY
	}
	if opts.DirectIO {
		mode |= unix.O_DIRECT
	}
	fd, err := unix.Open(path, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop attach %s: open: %w", path, err)
	}
	defer unix.Close(fd)
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop attach %s: open /dev/loop-control: %w", path, err)
	}
	defer unix.Close(ctl)

	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("loop attach %s: %w", path, err)
		}
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop attach %s: get free loop device: %w", path, err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		lfd, err := configureLoop(dev, n, fd, path, opts)
		if errors.Is(err, unix.EBUSY) && attempt < 20 {
			continue // taken by someone else between GET_FREE and here
		}
		if err != nil {
			return nil, fmt.Errorf("loop attach %s to %s: %w", path, dev, err)
		}
		return os.NewFile(uintptr(lfd), dev), nil
	}
}

// configureLoop binds the open file fd to loop device n and returns the
// device, open.
func configureLoop(dev string, n, fd int, path string, opts LoopOptions) (lfd int, err error) {
	lfd, err = openLoopDev(dev, n, opts.ReadOnly)
	if err != nil {
		return -1, err
	}
	defer func() {
		if err != nil {
			unix.Close(lfd)
		}
	}()
	var flags uint32
	if opts.ReadOnly {
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	if opts.AutoClear {
		flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	if opts.DirectIO {
		flags |= unix.LO_FLAGS_DIRECT_IO
	}
	cfg := unix.LoopConfig{Fd: uint32(fd), Size: opts.BlockSize}
	cfg.Info.Flags = flags
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], path)
	err = unix.IoctlLoopConfigure(lfd, &cfg)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) && !kernelHasLoopConfigure() {
		err = setFDLoop(lfd, fd, cfg.Info, opts)
	}
	if err != nil {
		return -1, fmt.Errorf("configure: %w", err)
	}
	if opts.DirectIO {
		// The kernel drops direct I/O silently when the file cannot do
		// it; say so rather than cache twice.
		if st, serr := loopStatus(n); serr == nil && !st.DirectIO {
			unix.IoctlSetInt(lfd, unix.LOOP_CLR_FD, 0)
			return -1, errors.New("the file does not support direct I/O")
		}
	}
	return lfd, nil
}

// kernelHasLoopConfigure reports whether the running kernel is 5.8 or
// newer, where LOOP_CONFIGURE exists, so that an EINVAL from it is about
// the configuration and not a missing ioctl.
func kernelHasLoopConfigure() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return true
	}
	rel := unix.ByteSliceToString(u.Release[:])
	var major, minor int
	fmt.Sscanf(rel, "%d.%d", &major, &minor)
	return major > 5 || major == 5 && minor >= 8
}

// setFDLoop is the pre-5.8 way: bind, then set flags and block size.
func setFDLoop(lfd, fd int, info unix.LoopInfo64, opts LoopOptions) error {
	if err := unix.IoctlSetInt(lfd, unix.LOOP_SET_FD, fd); err != nil {
		return fmt.Errorf("LOOP_SET_FD: %w", err)
	}
	info.Flags &^= unix.LO_FLAGS_DIRECT_IO | unix.LO_FLAGS_READ_ONLY
	err := unix.IoctlLoopSetStatus64(lfd, &info)
	if err == nil && opts.BlockSize != 512 {
		err = unix.IoctlSetInt(lfd, unix.LOOP_SET_BLOCK_SIZE, int(opts.BlockSize))
	}
	if err == nil && opts.DirectIO {
		err = unix.IoctlSetInt(lfd, unix.LOOP_SET_DIRECT_IO, 1)
	}
	if err != nil {
		unix.IoctlSetInt(lfd, unix.LOOP_CLR_FD, 0)
		return fmt.Errorf("LOOP_SET_STATUS64: %w", err)
	}
	return nil
}

// openLoopDev opens /dev/loopN, creating the node when devtmpfs has not.
func openLoopDev(dev string, n int, readOnly bool) (int, error) {
	mode := unix.O_RDWR
	if readOnly {
		mode = unix.O_RDONLY
	}
	for range 50 {
		fd, err := unix.Open(dev, mode|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("open %s: %w", dev, err)
		}
		if merr := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); merr != nil && !errors.Is(merr, unix.EEXIST) {
			time.Sleep(10 * time.Millisecond) // udev may be creating it
		}
	}
	return -1, fmt.Errorf("open %s: %w", dev, unix.ENOENT)
}

// Detach undoes Loop or NBD for dev (/dev/loopN or /dev/nbdN). A loop
// device that is still open (mounted) is detached by the kernel when its
// last user closes it.
func Detach(ctx context.Context, dev string) error {
	base := filepath.Base(dev)
	switch {
	case strings.HasPrefix(base, "loop"):
		return detachLoop(ctx, dev)
	case strings.HasPrefix(base, "nbd"):
		return detachNBD(ctx, dev)
	}
	return fmt.Errorf("detach %s: %w", dev, ErrNotAttached)
}

func detachLoop(ctx context.Context, dev string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil {
		if errors.Is(err, unix.ENXIO) {
			return fmt.Errorf("detach %s: %w", dev, ErrNotAttached)
		}
		return fmt.Errorf("detach %s: LOOP_CLR_FD: %w", dev, err)
	}
	return nil
}

// LoopStatus describes the loop device dev (/dev/loopN) from sysfs. It
// returns an error wrapping ErrNotAttached when dev has no backing file.
func LoopStatus(dev string) (LoopDevice, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dev), "loop"))
	if err != nil || !strings.HasPrefix(filepath.Base(dev), "loop") {
		return LoopDevice{}, fmt.Errorf("loop status %s: not a loop device", dev)
	}
	return loopStatus(n)
}

func loopStatus(n int) (LoopDevice, error) {
	name := "loop" + strconv.Itoa(n)
	sys := "/sys/block/" + name
	backing, err := os.ReadFile(sys + "/loop/backing_file")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return LoopDevice{}, fmt.Errorf("loop status /dev/%s: %w", name, ErrNotAttached)
		}
		return LoopDevice{}, fmt.Errorf("loop status /dev/%s: %w", name, err)
	}
	d := LoopDevice{Dev: "/dev/" + name, BackingFile: strings.TrimSuffix(string(backing), "\n")}
	d.AutoClear = readSysBool(sys + "/loop/autoclear")
	d.DirectIO = readSysBool(sys + "/loop/dio")
	d.ReadOnly = readSysBool(sys + "/ro")
	if b, err := os.ReadFile(sys + "/size"); err == nil {
		sectors, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		d.Size = sectors * 512
	}
	return d, nil
}

func readSysBool(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// LoopDevices lists the attached loop devices.
func LoopDevices() ([]LoopDevice, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	var out []LoopDevice
	for _, e := range ents {
		n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "loop"))
		if err != nil || !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		d, err := loopStatus(n)
		if err != nil {
			continue // not attached
		}
		out = append(out, d)
	}
	return out, nil
}

// DetachUnder detaches every loop device whose backing file lies under
// dir, and returns the devices it detached. The daemon calls it at start
// for its FUSE mount point before clearing a stale mount there: a loop
// device on a file of a killed daemon's mount only fails I/O, and after
// the stale mount is detached its backing path no longer shows where it
// came from.
func DetachUnder(ctx context.Context, dir string) ([]string, error) {
	devs, err := LoopDevices()
	if err != nil {
		return nil, err
	}
	prefix := filepath.Clean(dir) + "/"
	var done []string
	var errs []error
	for _, d := range devs {
		if !strings.HasPrefix(d.BackingFile, prefix) {
			continue
		}
		if err := detachLoop(ctx, d.Dev); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, d.Dev)
	}
	return done, errors.Join(errs...)
}
