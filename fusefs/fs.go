package fusefs

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Defaults for the zero fields of Options.
const (
	DefaultFsName       = "tandem"
	DefaultMaxWrite     = 1 << 20
	DefaultEntryTimeout = time.Second
	DefaultAttrTimeout  = time.Second
	// DefaultMaxBackground is how many asynchronous requests (direct I/O
	// from a loop device, readahead) the kernel keeps in flight.
	DefaultMaxBackground = 64
)

// Options configure a mount. The zero value is ready to use.
type Options struct {
	// Dirs are the root directories always listed, even when empty.
	// Entries whose Dir is not among them appear too. Default DefaultDirs.
	Dirs []string
	// FsName is shown as the source of the mount in /proc/mounts and df.
	// Default DefaultFsName.
	FsName string
	// MaxWrite is the largest read or write request the kernel sends
	// (capped by the kernel at 1 MiB). Default DefaultMaxWrite.
	MaxWrite int
	// MaxBackground is how many asynchronous requests the kernel may have
	// in flight. Default DefaultMaxBackground.
	MaxBackground int
	// EntryTimeout is how long the kernel may cache a name it looked up;
	// AttrTimeout how long it may cache a file's size and mode. Defaults
	// DefaultEntryTimeout and DefaultAttrTimeout; negative means zero.
	EntryTimeout time.Duration
	AttrTimeout  time.Duration
	// Cached lets the kernel's page cache hold file data (no
	// FOPEN_DIRECT_IO). Off by default: a loop device with direct I/O on
	// a FUSE file would otherwise cache every block twice.
	Cached bool
	// UID and GID own every file and directory. Default root.
	UID, GID uint32
	// Debug logs every FUSE request at slog.LevelDebug.
	Debug bool
}

func (o Options) withDefaults() Options {
	if len(o.Dirs) == 0 {
		o.Dirs = DefaultDirs
	}
	if o.FsName == "" {
		o.FsName = DefaultFsName
	}
	if o.MaxWrite <= 0 {
		o.MaxWrite = DefaultMaxWrite
	}
	if o.MaxBackground <= 0 {
		o.MaxBackground = DefaultMaxBackground
	}
	if o.EntryTimeout == 0 {
		o.EntryTimeout = DefaultEntryTimeout
	}
	if o.AttrTimeout == 0 {
		o.AttrTimeout = DefaultAttrTimeout
	}
	o.EntryTimeout = max(o.EntryTimeout, 0)
	o.AttrTimeout = max(o.AttrTimeout, 0)
	return o
}

// Validate reports options that cannot work.
func (o Options) Validate() error {
	for _, d := range o.Dirs {
		if !validName(d) {
			return fmt.Errorf("fusefs: directory %q: %w", d, ErrBadName)
		}
	}
	return nil
}

// FS is a mounted file system. Create it with Mount; Unmount it once.
type FS struct {
	dir     string
	src     Source
	opts    Options
	logger  *slog.Logger
	server  *fuse.Server
	root    *rootNode
	conn    uint64    // fusectl connection number, for aborting
	mounted time.Time // the time every file and directory shows

	mu        sync.Mutex
	unmounted bool
}

// Mount mounts a file system at dir presenting the entries of src and
// starts serving it. A stale mount at dir left by a killed process is
// cleared first (see ClearStale); dir is created when missing. The mount
// allows other users (allow_other: tools and services of other uids open
// the files), and files open with FOPEN_DIRECT_IO unless opts.Cached. As
// root it mounts directly; otherwise through fusermount3, which needs
// user_allow_other in /etc/fuse.conf.
func Mount(ctx context.Context, dir string, src Source, opts Options, logger *slog.Logger) (*FS, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts = opts.withDefaults()
	if err := ClearStale(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	f := &FS{dir: dir, src: src, opts: opts, logger: logger, mounted: time.Now()}
	f.root = &rootNode{fs: f}
	entryTimeout, attrTimeout, negTimeout := opts.EntryTimeout, opts.AttrTimeout, time.Duration(0)
	fopts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:    true,
			FsName:        opts.FsName,
			Name:          "tandem",
			MaxWrite:      opts.MaxWrite,
			MaxReadAhead:  opts.MaxWrite,
			MaxBackground: opts.MaxBackground,
			DirectMount:   true,
			// Asynchronous direct I/O lets a loop device keep many
			// requests in flight on one file.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			DisableXAttrs:     true,
			DisableSplice:     true,
			Debug:             opts.Debug,
			// go-fuse's request trace goes to Debug, its complaints
			// to Warn.
			Logger: goFuseLogger(logger, opts.Debug),
		},
		EntryTimeout:    &entryTimeout,
		AttrTimeout:     &attrTimeout,
		NegativeTimeout: &negTimeout,
		UID:             opts.UID,
		GID:             opts.GID,
		Logger:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	server, err := fs.Mount(dir, f.root, fopts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	f.server = server
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err == nil {
		f.conn = uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev))
	}
	logger.Debug("fuse mounted", logKeyDir, dir)
	return f, nil
}

// Log keys.
const (
	logKeyDir = "dir"
	logKeyErr = "err"
)

func goFuseLogger(logger *slog.Logger, debug bool) *log.Logger {
	if debug {
		return slog.NewLogLogger(logger.Handler(), slog.LevelDebug)
	}
	return slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
}

// Invalidate tells the kernel to drop what it caches of DIR/dir/name (the
// name and its attributes), so that a file the source just removed or
// replaced is looked up again at once rather than after
// Options.EntryTimeout. Opens always ask the source, so calling it is
// never needed for correctness.
func (f *FS) Invalidate(dir, name string) {
	d := f.root.GetChild(dir)
	if d == nil {
		return // never looked up, nothing cached
	}
	if ch := d.GetChild(name); ch != nil {
		ch.NotifyContent(0, 0)
	}
	d.NotifyEntry(name)
}

// Dir returns the mount point.
func (f *FS) Dir() string { return f.dir }

// Unmount unmounts the file system and waits for its requests to end.
// When the mount is busy (a loop device or a process holds a file open)
// it is detached lazily: the name goes away at once and the file system
// goes on serving its open files until they are closed or ctx ends, when
// the connection is aborted (their I/O then fails).
func (f *FS) Unmount(ctx context.Context) error {
	f.mu.Lock()
	if f.unmounted {
		f.mu.Unlock()
		return nil
	}
	f.unmounted = true
	f.mu.Unlock()

	done := make(chan struct{})
	err := f.server.Unmount()
	if err == nil {
		f.logger.Debug("fuse unmounted", logKeyDir, f.dir)
		return nil
	}
	f.logger.Warn("fuse mount busy, detaching lazily", logKeyDir, f.dir, logKeyErr, err)
	if lerr := unix.Unmount(f.dir, unix.MNT_DETACH); lerr != nil && !errors.Is(lerr, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w (lazy: %v)", f.dir, err, lerr)
	}
	go func() { f.server.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	if aerr := f.abort(); aerr != nil {
		return fmt.Errorf("unmount %s: abort connection: %w", f.dir, aerr)
	}
	<-done
	return nil
}

// abort ends the kernel connection through fusectl, failing every
// request in flight and to come.
// fusectl is mounted there when it is not yet (as systemd does at boot).
func (f *FS) abort() error {
	const ctl = "/sys/fs/fuse/connections"
	p := ctl + "/" + strconv.FormatUint(f.conn, 10) + "/abort"
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		if merr := unix.Mount("fusectl", ctl, "fusectl", 0, ""); merr != nil && !errors.Is(merr, unix.EBUSY) {
			return fmt.Errorf("abort fuse connection %d: mount fusectl: %w", f.conn, merr)
		}
	}
	if err := os.WriteFile(p, []byte("1"), 0); err != nil {
		return fmt.Errorf("abort fuse connection %d: %w", f.conn, err)
	}
	return nil
}

// entries asks the source.
func (f *FS) entries(ctx context.Context) ([]Entry, error) {
	es, err := f.src.Entries(ctx)
	if err != nil {
		f.logger.Warn("fuse source entries", logKeyErr, err)
	}
	return es, err
}

// lookup finds DIR/name in the source.
func (f *FS) lookup(ctx context.Context, dir, name string) (Entry, bool, error) {
	es, err := f.entries(ctx)
	if err != nil {
		return Entry{}, false, err
	}
	for _, e := range es {
		if e.Dir == dir && e.Name == name && e.File != nil {
			return e, true, nil
		}
	}
	return Entry{}, false, nil
}

// ClearStale clears a stale FUSE mount at dir, left by a process that was
// killed: statfs then fails with ENOTCONN, and the mount is detached lazily
// (umount2 MNT_DETACH, or fusermount3 -uz when that is refused). A live
// mount and a plain directory are left alone; a missing dir is not an
// error.
func ClearStale(dir string) error {
	for range 8 { // mounts may be stacked
		// statfs always reaches the FUSE server; stat may be answered
		// from the kernel's attribute cache.
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.ENOTCONN) && !errors.Is(err, unix.ECONNABORTED) {
			return fmt.Errorf("clear stale mount %s: stat: %w", dir, err)
		}
		if uerr := unix.Unmount(dir, unix.MNT_DETACH); uerr != nil {
			if ferr := fusermountLazy(dir); ferr != nil {
				return fmt.Errorf("clear stale mount %s: %w (fusermount: %v)", dir, uerr, ferr)
			}
		}
	}
	return fmt.Errorf("clear stale mount %s: still not connected after 8 unmounts", dir)
}
