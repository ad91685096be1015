// Package crashfs is a FUSE file system for power-cut tests: a loopback
// over a directory that remembers, for every file, what its contents were
// at its last fsync, so that a test can cut the power — put back some or
// all of what was written since — and restart the program under test on
// what a real disk could hold after the cut.
//
// Its model of a disk with a volatile write cache:
//   - File data is durable once the file is fsynced (fsync or fdatasync,
//     through any handle, including msync of a mapping). Until then each
//     4 KiB page written since may or may not survive a cut,
//     independently of the others: Cut keeps each with a chosen
//     probability and reverts the rest to their contents at the last
//     fsync (pages past the size the file had then become zeroes, or are
//     cut off with the size).
//   - Metadata is durable at once: create, mkdir, rename, unlink,
//     truncate and a fallocate that grows the file. This is kinder than
//     a real file system without a directory fsync, and the program under
//     test fsyncs its directories anyway.
//
// Writes pass through to the directory below at once (the model keeps
// the pages' earlier contents, not the new ones), so reads, sizes and
// mappings behave as the loopback's. After Cut every write fails with
// EIO, as on a machine without power; Unmount, then Mount again over the
// same directory to "boot" it.
package crashfs

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// pageSize is the unit in which unsynced data survives a cut or not.
const pageSize = 4096

// FS is one mount of a crash file system.
type FS struct {
	lower  string
	server *fuse.Server

	mu    sync.Mutex
	dead  bool
	files map[uint64]*unsynced // by the lower inode number
}

// unsynced is what a file held at its last fsync, for the pages written
// since.
type unsynced struct {
	size  int64            // the size at the last fsync (or durable size change)
	pages map[int64][]byte // page index -> contents then, for pages below size
	grown map[int64]bool   // pages at or past size written since
}

// Mount mounts a crash file system over the directory lower at dir.
func Mount(dir, lower string) (*FS, error) {
	c := &FS{lower: lower, files: map[uint64]*unsynced{}}
	var st syscall.Stat_t
	if err := syscall.Stat(lower, &st); err != nil {
		return nil, fmt.Errorf("crashfs: stat %s: %w", lower, err)
	}
	root := &gofs.LoopbackRoot{Path: lower, Dev: uint64(st.Dev)}
	root.NewNode = func(r *gofs.LoopbackRoot, _ *gofs.Inode, _ string, _ *syscall.Stat_t) gofs.InodeEmbedder {
		return &node{LoopbackNode: gofs.LoopbackNode{RootData: r}, fs: c}
	}
	rootNode := root.NewNode(root, nil, "", &st)
	root.RootNode = rootNode
	sec := time.Second
	server, err := gofs.Mount(dir, rootNode, &gofs.Options{
		AttrTimeout:  &sec,
		EntryTimeout: &sec,
		MountOptions: fuse.MountOptions{FsName: "crashfs", Name: "crashfs", DisableXAttrs: true},
	})
	if err != nil {
		return nil, fmt.Errorf("crashfs: mount %s on %s: %w", lower, dir, err)
	}
	c.server = server
	return c, nil
}

// Unmount unmounts the file system, retrying while it is busy.
func (c *FS) Unmount() error {
	var err error
	for range 50 {
		if err = c.server.Unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("crashfs: unmount: %w", err)
}

// Cut cuts the power: from now on every write fails, and each page
// written since its file's last fsync is kept with probability keep and
// otherwise reverted, drawing from rng. Call it once the program under
// test is dead (a write of a live process after the cut fails). It
// returns the number of pages kept and reverted.
func (c *FS) Cut(rng *rand.Rand, keep float64) (kept, reverted int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dead = true
	paths, err := c.pathsByInode()
	if err != nil {
		return 0, 0, err
	}
	for ino, u := range c.files {
		p, ok := paths[ino]
		if !ok {
			continue // unlinked since
		}
		k, r, err := u.revert(p, rng, keep)
		kept, reverted = kept+k, reverted+r
		if err != nil {
			return kept, reverted, err
		}
	}
	c.files = map[uint64]*unsynced{}
	return kept, reverted, nil
}

// pathsByInode maps the inode numbers of the lower directory's regular
// files to their paths.
func (c *FS) pathsByInode() (map[uint64]string, error) {
	paths := map[uint64]string{}
	err := filepath.WalkDir(c.lower, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		paths[st.Ino] = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("crashfs: walk %s: %w", c.lower, err)
	}
	return paths, nil
}

// revert puts back the pages the cut loses in the file at path.
func (u *unsynced) revert(path string, rng *rand.Rand, keep float64) (kept, reverted int, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("crashfs: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("crashfs: %w", err)
	}
	for i, old := range u.pages {
		if rng.Float64() < keep {
			kept++
			continue
		}
		reverted++
		if _, err := f.WriteAt(old, i*pageSize); err != nil {
			return kept, reverted, fmt.Errorf("crashfs: revert %s page %d: %w", path, i, err)
		}
	}
	// Pages past the old size: the file's new size reaches the last one
	// kept; the others below it read as zeroes.
	size := u.size
	var lost []int64
	for i := range u.grown {
		if rng.Float64() < keep {
			kept++
			size = max(size, min(fi.Size(), (i+1)*pageSize))
			continue
		}
		reverted++
		lost = append(lost, i)
	}
	zero := make([]byte, pageSize)
	for _, i := range lost {
		start, end := max(i*pageSize, u.size), min((i+1)*pageSize, size)
		if start < end {
			if _, err := f.WriteAt(zero[:end-start], start); err != nil {
				return kept, reverted, fmt.Errorf("crashfs: zero %s page %d: %w", path, i, err)
			}
		}
	}
	if size < fi.Size() {
		if err := f.Truncate(size); err != nil {
			return kept, reverted, fmt.Errorf("crashfs: cut %s to %d: %w", path, size, err)
		}
	}
	return kept, reverted, nil
}

// state returns the unsynced state of the file open as fd, with the
// inode number ino, starting it at the file's current size.
func (c *FS) state(fd int, ino uint64) (*unsynced, error) {
	if u, ok := c.files[ino]; ok {
		return u, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	u := &unsynced{size: st.Size, pages: map[int64][]byte{}, grown: map[int64]bool{}}
	c.files[ino] = u
	return u, nil
}

// preserve records the contents of the pages in [off, off+n) that the
// file held at its last fsync, before they change. Call with c.mu held.
func (c *FS) preserve(fd int, ino uint64, off, n int64) syscall.Errno {
	if c.dead {
		return syscall.EIO
	}
	if n <= 0 {
		return 0
	}
	u, err := c.state(fd, ino)
	if err != nil {
		return gofs.ToErrno(err)
	}
	for i := off / pageSize; i <= (off+n-1)/pageSize; i++ {
		start := i * pageSize
		if start >= u.size {
			u.grown[i] = true
			continue
		}
		if _, ok := u.pages[i]; ok {
			continue
		}
		old := make([]byte, min(pageSize, u.size-start))
		if _, err := unix.Pread(fd, old, start); err != nil {
			return gofs.ToErrno(err)
		}
		u.pages[i] = old
	}
	return 0
}

// resized makes a size change of the file durable: pages cut off are
// forgotten, and pages written past the old size that the new one covers
// revert to zeroes.
func (c *FS) resized(ino uint64, size int64) {
	u, ok := c.files[ino]
	if !ok {
		return
	}
	for i, old := range u.pages {
		switch {
		case i*pageSize >= size:
			delete(u.pages, i)
		case i*pageSize+int64(len(old)) > size:
			u.pages[i] = old[:size-i*pageSize]
		}
	}
	for i := range u.grown {
		switch {
		case i*pageSize >= size:
			delete(u.grown, i)
		case i*pageSize >= u.size && size > u.size:
			delete(u.grown, i)
			u.pages[i] = make([]byte, min(pageSize, size-i*pageSize))
		}
	}
	u.size = size
}

// synced forgets the file's unsynced state: all of it is durable.
func (c *FS) synced(ino uint64) {
	delete(c.files, ino)
}

// node is a loopback node whose files keep the crash model.
type node struct {
	gofs.LoopbackNode
	fs *FS
}

func (n *node) lowerPath() string {
	return filepath.Join(n.RootData.Path, n.Path(n.Root()))
}

// forget drops the unsynced state of the file at p, if this name is its
// last link, before the name goes.
func (n *node) forget(p string) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Nlink > 1 {
		return
	}
	n.fs.mu.Lock()
	delete(n.fs.files, st.Ino)
	n.fs.mu.Unlock()
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	n.forget(filepath.Join(n.lowerPath(), name))
	return n.LoopbackNode.Unlink(ctx, name)
}

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if np, ok := newParent.(*node); ok && flags&unix.RENAME_EXCHANGE == 0 {
		n.forget(filepath.Join(np.lowerPath(), newName))
	}
	return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	// Direct I/O would need aligned buffers the kernel does not give a
	// FUSE server; the model does not depend on it.
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags&^syscall.O_DIRECT)
	if errno != 0 {
		return nil, 0, errno
	}
	return n.wrap(fh), fl, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags&^syscall.O_DIRECT, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return in, n.wrap(fh), fl, 0
}

func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if f != nil {
		return f.(*file).Setattr(ctx, in, out)
	}
	if _, ok := in.GetSize(); !ok {
		return n.LoopbackNode.Setattr(ctx, nil, in, out)
	}
	fd, err := syscall.Open(n.lowerPath(), syscall.O_RDWR, 0)
	if err != nil {
		return gofs.ToErrno(err)
	}
	fh := n.wrap(gofs.NewLoopbackFile(fd)).(*file)
	defer fh.Release(ctx)
	return fh.Setattr(ctx, in, out)
}

// wrap puts the crash model around a loopback file handle.
func (n *node) wrap(fh gofs.FileHandle) gofs.FileHandle {
	fd := -1
	if p, ok := fh.(gofs.FilePassthroughFder); ok {
		fd, _ = p.PassthroughFd()
	}
	f := &file{inner: fh, fs: n.fs, fd: fd, rfd: fd}
	var st syscall.Stat_t
	if fd >= 0 {
		_ = syscall.Fstat(fd, &st)
		f.ino = st.Ino
		// Pages are preserved by reading them: a write-only handle gets
		// a second, readable descriptor of the same file.
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_ACCMODE == unix.O_WRONLY {
			if rfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
				f.rfd = rfd
			}
		}
	}
	return f
}

// file is a loopback file handle that keeps the crash model.
type file struct {
	inner gofs.FileHandle
	fs    *FS
	fd    int
	rfd   int // fd, or a readable descriptor of the file when fd is write-only
	ino   uint64
}

var (
	_ gofs.FileWriter    = (*file)(nil)
	_ gofs.FileReader    = (*file)(nil)
	_ gofs.FileFsyncer   = (*file)(nil)
	_ gofs.FileAllocater = (*file)(nil)
	_ gofs.FileSetattrer = (*file)(nil)
)

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if errno := f.fs.preserve(f.rfd, f.ino, off, int64(len(data))); errno != 0 {
		return 0, errno
	}
	return f.inner.(gofs.FileWriter).Write(ctx, data, off)
}

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return f.inner.(gofs.FileReader).Read(ctx, dest, off)
}

// Fsync makes the file's data durable. The directory below is the
// model's stable storage, so nothing needs to reach its disk.
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.fs.dead {
		return syscall.EIO
	}
	f.fs.synced(f.ino)
	return 0
}

func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if mode&(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) != 0 {
		if errno := f.fs.preserve(f.rfd, f.ino, int64(off), int64(size)); errno != 0 {
			return errno
		}
	} else if f.fs.dead {
		return syscall.EIO
	}
	if errno := f.inner.(gofs.FileAllocater).Allocate(ctx, off, size, mode); errno != 0 {
		return errno
	}
	return f.durableSize()
}

func (f *file) Setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if _, ok := in.GetSize(); ok && f.fs.dead {
		return syscall.EIO
	}
	if errno := f.inner.(gofs.FileSetattrer).Setattr(ctx, in, out); errno != 0 {
		return errno
	}
	if _, ok := in.GetSize(); ok {
		return f.durableSize()
	}
	return 0
}

// durableSize records the file's current size as durable. Call with
// f.fs.mu held.
func (f *file) durableSize() syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return gofs.ToErrno(err)
	}
	f.fs.resized(f.ino, st.Size)
	return 0
}

func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	return f.inner.(gofs.FileGetattrer).Getattr(ctx, out)
}

func (f *file) Flush(ctx context.Context) syscall.Errno {
	return f.inner.(gofs.FileFlusher).Flush(ctx)
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	if f.rfd != f.fd {
		_ = unix.Close(f.rfd)
	}
	return f.inner.(gofs.FileReleaser).Release(ctx)
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return f.inner.(gofs.FileLseeker).Lseek(ctx, off, whence)
}

func (f *file) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	return f.inner.(gofs.FileGetlker).Getlk(ctx, owner, lk, flags, out)
}

func (f *file) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.inner.(gofs.FileSetlker).Setlk(ctx, owner, lk, flags)
}

func (f *file) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.inner.(gofs.FileSetlkwer).Setlkw(ctx, owner, lk, flags)
}
