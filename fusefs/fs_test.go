package fusefs_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/fusefs"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

// oneDisk mounts a single writable disk "d0" over a fresh memFile.
func oneDisk(t *testing.T, size int) (*memFile, string) {
	t.Helper()
	m := newMemFile(size)
	var set fusefs.Set
	if err := set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "d0", File: m}); err != nil {
		t.Fatal(err)
	}
	_, dir := mount(t, &set, fusefs.Options{})
	return m, filepath.Join(dir, "disks", "d0")
}

func TestReadWriteThroughMount(t *testing.T) {
	m, path := oneDisk(t, 8*mib)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.Size(), int64(8*mib); got != want {
		t.Errorf("size: got %d, want %d", got, want)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	want := make([]byte, 8*mib)
	for _, w := range []struct{ off, n int }{{0, 4096}, {12345, 777}, {mib - 100, 3 * mib}, {8*mib - 512, 512}} {
		p := make([]byte, w.n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if n, err := f.WriteAt(p, int64(w.off)); err != nil || n != w.n {
			t.Fatalf("WriteAt(%d bytes at %d): got %d, %v; want %d, nil", w.n, w.off, n, err, w.n)
		}
		copy(want[w.off:], p)
	}
	if got := m.snapshot(); !bytes.Equal(got, want) {
		t.Errorf("file content after writes through the mount differs from what was written")
	}
	got := make([]byte, 8*mib)
	if n, err := f.ReadAt(got, 0); err != nil || n != len(got) {
		t.Fatalf("ReadAt whole file: got %d, %v; want %d, nil", n, err, len(got))
	}
	if !bytes.Equal(got, want) {
		t.Errorf("read through the mount differs from what was written")
	}

	// A read crossing the end is short; one at the end reads nothing.
	if n, err := f.ReadAt(make([]byte, 4096), 8*mib-1000); n != 1000 {
		t.Errorf("read across the end: got %d bytes (%v), want 1000", n, err)
	}
	// A write crossing the end is short; one at the end fails with ENOSPC.
	if n, err := unix.Pwrite(int(f.Fd()), make([]byte, 4096), 8*mib-1000); n != 1000 {
		t.Errorf("write across the end: got %d bytes (%v), want 1000", n, err)
	}
	if _, err := f.WriteAt([]byte{1}, 8*mib); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write at the end: got %v, want ENOSPC", err)
	}
}

func TestDirectIO(t *testing.T) {
	m, path := oneDisk(t, mib)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// With FOPEN_DIRECT_IO the write reaches the File at once and a read
	// sees a change made behind the kernel's back.
	if _, err := f.WriteAt([]byte("hello"), 100); err != nil {
		t.Fatal(err)
	}
	if got := m.snapshot()[100:105]; string(got) != "hello" {
		t.Errorf("File after write: got %q, want %q", got, "hello")
	}
	m.WriteAt([]byte("world"), 100)
	got := make([]byte, 5)
	if _, err := f.ReadAt(got, 100); err != nil {
		t.Fatal(err)
	}
	if string(got) != "world" {
		t.Errorf("read after the File changed: got %q, want %q (page cache in the way?)", got, "world")
	}
}

func TestFsyncReachesFlush(t *testing.T) {
	m, path := oneDisk(t, mib)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	before, _, _ := m.counts()
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	afterSync, _, _ := m.counts()
	if afterSync != before+1 {
		t.Errorf("flushes after fsync: got %d, want %d", afterSync, before+1)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatalf("fdatasync: %v", err)
	}
	afterDatasync, _, _ := m.counts()
	if afterDatasync != afterSync+1 {
		t.Errorf("flushes after fdatasync: got %d, want %d", afterDatasync, afterSync+1)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	afterClose, _, _ := m.counts()
	if afterClose != afterDatasync+1 {
		t.Errorf("flushes after close of a writable descriptor: got %d, want %d", afterClose, afterDatasync+1)
	}
}

func TestFallocate(t *testing.T) {
	m, path := oneDisk(t, 4*mib)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xaa}, 4*mib), 0); err != nil {
		t.Fatal(err)
	}

	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, mib, 65536); err != nil {
		t.Fatalf("punch hole: %v", err)
	}
	_, trims, _ := m.counts()
	if want := [][2]int64{{mib, 65536}}; !slices.Equal(trims, want) {
		t.Errorf("trims after punch hole: got %v, want %v", trims, want)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 2*mib, 4096); err != nil {
		t.Fatalf("zero range: %v", err)
	}
	_, _, zeroes := m.counts()
	if want := [][3]int64{{2 * mib, 4096, 0}}; !slices.Equal(zeroes, want) {
		t.Errorf("zeroes after zero range: got %v, want %v", zeroes, want)
	}
	// A punch crossing the end is cut at the end.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4*mib-4096, 65536); err != nil {
		t.Fatalf("punch hole across the end: %v", err)
	}
	_, trims, _ = m.counts()
	if got, want := trims[len(trims)-1], [2]int64{4*mib - 4096, 4096}; got != want {
		t.Errorf("trim across the end: got %v, want %v", got, want)
	}
	got := make([]byte, 65536)
	if _, err := f.ReadAt(got, mib); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 65536)) {
		t.Errorf("punched range does not read as zeroes")
	}
	// Growing the file is refused; plain allocation inside it succeeds.
	if err := unix.Fallocate(fd, 0, 0, 8*mib); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("fallocate beyond the end: got %v, want EFBIG", err)
	}
	if err := unix.Fallocate(fd, 0, 0, mib); err != nil {
		t.Errorf("fallocate inside the file: got %v, want nil", err)
	}
}

func TestSeekDataHole(t *testing.T) {
	m, path := oneDisk(t, 8*mib)
	m.setExtents([]fusefs.Extent{
		{Length: mib}, // data
		{Length: 2 * mib, Hole: true, Zero: true}, // hole
		{Length: mib, Zero: true},                 // allocated zeroes: data
		{Length: 4 * mib, Hole: true, Zero: true}, // hole to the end
	})
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		off    int64
		whence int
		want   int64
		err    error
	}{
		{0, unix.SEEK_DATA, 0, nil},
		{0, unix.SEEK_HOLE, mib, nil},
		{mib, unix.SEEK_DATA, 3 * mib, nil},
		{mib + 5, unix.SEEK_HOLE, mib + 5, nil},
		{3 * mib, unix.SEEK_HOLE, 4 * mib, nil},
		{5 * mib, unix.SEEK_DATA, 0, syscall.ENXIO},
		{5 * mib, unix.SEEK_HOLE, 5 * mib, nil},
		{8 * mib, unix.SEEK_DATA, 0, syscall.ENXIO},
		{8 * mib, unix.SEEK_HOLE, 0, syscall.ENXIO},
	} {
		got, err := f.Seek(c.off, c.whence)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("lseek(%d, %d): got %d, %v; want %v", c.off, c.whence, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("lseek(%d, %d): got %d, %v; want %d", c.off, c.whence, got, err, c.want)
		}
	}
}

func TestSeekWithoutExtents(t *testing.T) {
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "plain", File: plainFile{newMemFile(mib)}})
	_, dir := mount(t, &set, fusefs.Options{})
	f, err := os.Open(filepath.Join(dir, "disks", "plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := f.Seek(100, unix.SEEK_DATA); err != nil || got != 100 {
		t.Errorf("SEEK_DATA without extents: got %d, %v; want 100", got, err)
	}
	if got, err := f.Seek(100, unix.SEEK_HOLE); err != nil || got != mib {
		t.Errorf("SEEK_HOLE without extents: got %d, %v; want %d", got, err, mib)
	}
}

// plainFile hides every optional method of a memFile.
type plainFile struct{ m *memFile }

func (p plainFile) ReadAt(b []byte, off int64) (int, error)  { return p.m.ReadAt(b, off) }
func (p plainFile) WriteAt(b []byte, off int64) (int, error) { return p.m.WriteAt(b, off) }
func (p plainFile) Size() int64                              { return p.m.Size() }

func TestExtentsFunc(t *testing.T) {
	type other struct {
		Length     int64
		Hole, Zero bool
	}
	m := newMemFile(4 * mib)
	m.WriteAt([]byte("data"), 0)
	src := func(off, length int64) ([]other, error) {
		return []other{{Length: mib}, {Length: length - mib, Hole: true, Zero: true}}, nil
	}
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirViews, Name: "v@1", File: plainFile{m}, ReadOnly: true,
		Extents: fusefs.ExtentsFunc(src, func(e other) fusefs.Extent { return fusefs.Extent(e) })})
	_, dir := mount(t, &set, fusefs.Options{})
	f, err := os.Open(filepath.Join(dir, "views", "v@1"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := f.Seek(0, unix.SEEK_HOLE); err != nil || got != mib {
		t.Errorf("SEEK_HOLE through Entry.Extents: got %d, %v; want %d", got, err, mib)
	}
}

func TestReadOnlyEntry(t *testing.T) {
	m := newMemFile(mib)
	m.WriteAt([]byte("view"), 0)
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirViews, Name: "d0@7", File: m, ReadOnly: true})
	_, dir := mount(t, &set, fusefs.Options{})
	path := filepath.Join(dir, "views", "d0@7")

	if _, err := os.OpenFile(path, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open read-write: got %v, want EROFS", err)
	}
	if _, err := os.OpenFile(path, os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open write-only: got %v, want EROFS", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.Mode().Perm(), os.FileMode(0o444); got != want {
		t.Errorf("mode: got %v, want %v", got, want)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got[:4]) != "view" || len(got) != mib {
		t.Errorf("read: got %q… (%d bytes), want \"view\"… (%d bytes)", got[:4], len(got), mib)
	}
	if err := os.Truncate(path, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("truncate: got %v, want EROFS", err)
	}
}

func TestTruncateFixedSize(t *testing.T) {
	_, path := oneDisk(t, mib)
	if err := os.Truncate(path, 2*mib); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("truncate to another size: got %v, want EINVAL", err)
	}
	if err := os.Truncate(path, mib); err != nil {
		t.Errorf("truncate to the same size: got %v, want nil", err)
	}
	if _, err := os.OpenFile(path, os.O_RDWR|os.O_TRUNC, 0); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("open with O_TRUNC: got %v, want EINVAL", err)
	}
	if _, err := os.Create(filepath.Join(filepath.Dir(path), "new")); err == nil {
		t.Errorf("creating a file in disks/: got nil error, want one")
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir %s: %v", dir, err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

func TestEntriesComeAndGo(t *testing.T) {
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "a", File: newMemFile(mib)})
	_, dir := mount(t, &set, fusefs.Options{EntryTimeout: -1, AttrTimeout: -1})

	if got, want := names(t, dir), []string{"disks", "test", "views"}; !slices.Equal(got, want) {
		t.Errorf("root: got %v, want %v", got, want)
	}
	if got, want := names(t, filepath.Join(dir, "disks")), []string{"a"}; !slices.Equal(got, want) {
		t.Errorf("disks: got %v, want %v", got, want)
	}

	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "b", File: newMemFile(2 * mib)})
	set.Put(fusefs.Entry{Dir: fusefs.DirTest, Name: "a", File: newMemFile(mib)})
	set.Put(fusefs.Entry{Dir: "extra", Name: "x", File: newMemFile(mib)})
	if got, want := names(t, filepath.Join(dir, "disks")), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Errorf("disks after adding b: got %v, want %v", got, want)
	}
	st, err := os.Stat(filepath.Join(dir, "disks", "b"))
	if err != nil || st.Size() != 2*mib {
		t.Errorf("stat disks/b: got %v, %v; want size %d", st, err, 2*mib)
	}
	if got, want := names(t, filepath.Join(dir, "test")), []string{"a"}; !slices.Equal(got, want) {
		t.Errorf("test: got %v, want %v", got, want)
	}
	if got, want := names(t, dir), []string{"disks", "extra", "test", "views"}; !slices.Equal(got, want) {
		t.Errorf("root with an extra dir: got %v, want %v", got, want)
	}

	// Held open across removal, a file keeps serving its File.
	held, err := os.OpenFile(filepath.Join(dir, "disks", "a"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	set.Delete(fusefs.DirDisks, "a")
	if got, want := names(t, filepath.Join(dir, "disks")), []string{"b"}; !slices.Equal(got, want) {
		t.Errorf("disks after removing a: got %v, want %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "disks", "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat removed disks/a: got %v, want ENOENT", err)
	}
	if _, err := os.Open(filepath.Join(dir, "disks", "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("open removed disks/a: got %v, want ENOENT", err)
	}
	if _, err := held.WriteAt([]byte("still"), 0); err != nil {
		t.Errorf("write through a descriptor opened before removal: %v", err)
	}

	// Re-created with another size, the name shows the new file.
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "a", File: newMemFile(3 * mib)})
	st, err = os.Stat(filepath.Join(dir, "disks", "a"))
	if err != nil || st.Size() != 3*mib {
		t.Errorf("stat re-created disks/a: got %v, %v; want size %d", st, err, 3*mib)
	}
}

func TestSetRejectsBadNames(t *testing.T) {
	var set fusefs.Set
	for _, e := range []fusefs.Entry{
		{Dir: fusefs.DirDisks, Name: "", File: newMemFile(1)},
		{Dir: fusefs.DirDisks, Name: "a/b", File: newMemFile(1)},
		{Dir: fusefs.DirDisks, Name: "..", File: newMemFile(1)},
		{Dir: "", Name: "a", File: newMemFile(1)},
	} {
		if err := set.Put(e); !errors.Is(err, fusefs.ErrBadName) {
			t.Errorf("Put(%q/%q): got %v, want ErrBadName", e.Dir, e.Name, err)
		}
	}
	es, _ := set.Entries(context.Background())
	if len(es) != 0 {
		t.Errorf("entries after bad puts: got %d, want 0", len(es))
	}
}

func TestUnmountBusy(t *testing.T) {
	m := newMemFile(mib)
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "d0", File: m})
	dir := t.TempDir()
	fsys, err := fusefs.Mount(context.Background(), dir, &set, fusefs.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	held, err := os.OpenFile(filepath.Join(dir, "disks", "d0"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := fsys.Unmount(ctx); err != nil {
		t.Fatalf("Unmount while a file is open: %v", err)
	}
	if mounted(t, dir) {
		t.Errorf("%s still mounted after Unmount", dir)
	}
	if _, err := held.WriteAt([]byte("x"), 0); err == nil {
		t.Errorf("write through a descriptor of an aborted mount: got nil error, want one")
	}
}

// mounted reports whether dir is a mount point.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, []byte(" "+dir+" "))
}

func TestInvalidate(t *testing.T) {
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "a", File: newMemFile(mib)})
	fsys, dir := mount(t, &set, fusefs.Options{EntryTimeout: time.Hour, AttrTimeout: time.Hour})
	path := filepath.Join(dir, "disks", "a")
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "a", File: newMemFile(2 * mib)})
	fsys.Invalidate(fusefs.DirDisks, "a")
	st, err := os.Stat(path)
	if err != nil || st.Size() != 2*mib {
		t.Errorf("stat after replace and Invalidate: got %v, %v; want size %d", st, err, 2*mib)
	}
	set.Delete(fusefs.DirDisks, "a")
	fsys.Invalidate(fusefs.DirDisks, "a")
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after delete and Invalidate: got %v, want ENOENT", err)
	}
	fsys.Invalidate("nothing", "here") // never looked up: no-op
}
