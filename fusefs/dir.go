package fusefs

import (
	"context"
	"slices"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// rootNode is the mount's root: one directory per Options.Dirs entry and
// per Dir the source names.
type rootNode struct {
	fs.Inode
	fs *FS
}

var (
	_ = (fs.NodeLookuper)((*rootNode)(nil))
	_ = (fs.NodeReaddirer)((*rootNode)(nil))
	_ = (fs.NodeGetattrer)((*rootNode)(nil))
	_ = (fs.NodeStatfser)((*rootNode)(nil))
)

// dirs lists the root's directories: the configured ones, then those
// only the source names, in order of first appearance.
func (r *rootNode) dirs(ctx context.Context) ([]string, syscall.Errno) {
	out := slices.Clone(r.fs.opts.Dirs)
	es, err := r.fs.entries(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	for _, e := range es {
		if validName(e.Dir) && !slices.Contains(out, e.Dir) {
			out = append(out, e.Dir)
		}
	}
	return out, 0
}

// Lookup finds a root directory.
func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	dirs, errno := r.dirs(ctx)
	if errno != 0 {
		return nil, errno
	}
	if !slices.Contains(dirs, name) {
		return nil, syscall.ENOENT
	}
	ch := r.GetChild(name)
	if ch == nil {
		ch = r.NewInode(ctx, &dirNode{fs: r.fs, name: name}, fs.StableAttr{Mode: syscall.S_IFDIR})
	}
	r.fs.dirAttr(&out.Attr)
	return ch, 0
}

// Readdir lists the root directories.
func (r *rootNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	dirs, errno := r.dirs(ctx)
	if errno != 0 {
		return nil, errno
	}
	list := make([]fuse.DirEntry, len(dirs))
	for i, d := range dirs {
		list[i] = fuse.DirEntry{Name: d, Mode: syscall.S_IFDIR}
	}
	return fs.NewListDirStream(list), 0
}

// Getattr describes the root.
func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.fs.dirAttr(&out.Attr)
	return 0
}

// Statfs reports the sum of the files' sizes as the capacity, all of it
// used, so df shows how much the mount presents.
func (r *rootNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	es, err := r.fs.entries(ctx)
	if err != nil {
		return syscall.EIO
	}
	const bsize = 4096
	var blocks uint64
	for _, e := range es {
		if e.File != nil {
			blocks += uint64((e.File.Size() + bsize - 1) / bsize)
		}
	}
	*out = fuse.StatfsOut{Blocks: blocks, Files: uint64(len(es)), Bsize: bsize, Frsize: bsize, NameLen: 255}
	return 0
}

// dirNode is one root directory (disks, views, test).
type dirNode struct {
	fs.Inode
	fs   *FS
	name string
}

var (
	_ = (fs.NodeLookuper)((*dirNode)(nil))
	_ = (fs.NodeReaddirer)((*dirNode)(nil))
	_ = (fs.NodeGetattrer)((*dirNode)(nil))
)

// Lookup asks the source for the file; a name the source dropped is
// removed from the tree.
func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	e, ok, err := d.fs.lookup(ctx, d.name, name)
	if err != nil {
		return nil, syscall.EIO
	}
	if !ok {
		d.RmChild(name)
		return nil, syscall.ENOENT
	}
	ch := d.GetChild(name)
	if ch == nil {
		ch = d.NewInode(ctx, &fileNode{fs: d.fs, dir: d.name, name: name}, fs.StableAttr{Mode: syscall.S_IFREG})
	}
	d.fs.fileAttr(&out.Attr, e)
	return ch, 0
}

// Readdir lists the source's entries of this directory.
func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	es, err := d.fs.entries(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	var list []fuse.DirEntry
	for _, e := range es {
		if e.Dir == d.name && e.File != nil && validName(e.Name) {
			list = append(list, fuse.DirEntry{Name: e.Name, Mode: syscall.S_IFREG})
		}
	}
	return fs.NewListDirStream(list), 0
}

// Getattr describes the directory.
func (d *dirNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fs.dirAttr(&out.Attr)
	return 0
}

func (f *FS) dirAttr(a *fuse.Attr) {
	a.Mode = syscall.S_IFDIR | 0o755
	a.Nlink = 2
	a.Owner = fuse.Owner{Uid: f.opts.UID, Gid: f.opts.GID}
	a.SetTimes(&f.mounted, &f.mounted, &f.mounted)
}

func (f *FS) fileAttr(a *fuse.Attr, e Entry) {
	a.Mode = syscall.S_IFREG | 0o644
	if e.ReadOnly {
		a.Mode = syscall.S_IFREG | 0o444
	}
	size := e.File.Size()
	a.Size = uint64(size)
	a.Blocks = uint64((size + 511) / 512)
	a.Blksize = 4096
	a.Nlink = 1
	a.Owner = fuse.Owner{Uid: f.opts.UID, Gid: f.opts.GID}
	a.SetTimes(&f.mounted, &f.mounted, &f.mounted)
}
