package crashfs

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// mounted mounts a crash file system over a fresh directory and returns
// it, the mount point and the directory below.
func mounted(t *testing.T) (*FS, string, string) {
	t.Helper()
	lower, mnt := t.TempDir(), t.TempDir()
	c, err := Mount(mnt, lower)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Unmount() })
	return c, mnt, lower
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// writeAt writes p at off in the file at path, optionally fsyncing it.
func writeAt(t *testing.T, path string, p []byte, off int64, sync bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCutRevertsUnsynced(t *testing.T) {
	c, mnt, lower := mounted(t)
	synced := append(fill('a', pageSize), fill('b', pageSize)...)
	writeAt(t, filepath.Join(mnt, "f"), synced, 0, true)
	// Since the fsync: overwrite the first page, grow by two pages.
	writeAt(t, filepath.Join(mnt, "f"), fill('c', 100), 10, false)
	writeAt(t, filepath.Join(mnt, "f"), fill('d', 2*pageSize), 2*pageSize, false)
	// A file never synced.
	writeAt(t, filepath.Join(mnt, "g"), fill('e', pageSize), 0, false)

	kept, reverted, err := c.Cut(rand.New(rand.NewPCG(1, 2)), 0)
	if err != nil || kept != 0 || reverted != 4 {
		t.Fatalf("Cut = %d kept, %d reverted, %v; want 0, 4, nil", kept, reverted, err)
	}
	if got, _ := os.ReadFile(filepath.Join(lower, "f")); !bytes.Equal(got, synced) {
		t.Errorf("f after the cut: %d bytes, want its %d synced bytes", len(got), len(synced))
	}
	if got, _ := os.ReadFile(filepath.Join(lower, "g")); len(got) != 0 {
		t.Errorf("g after the cut holds %d bytes, want none", len(got))
	}
	if err := os.WriteFile(filepath.Join(mnt, "h"), []byte("x"), 0o600); err == nil {
		t.Errorf("a write after the cut succeeded")
	}
}

func TestCutKeepsAll(t *testing.T) {
	c, mnt, lower := mounted(t)
	writeAt(t, filepath.Join(mnt, "f"), fill('a', 3*pageSize), 0, true)
	writeAt(t, filepath.Join(mnt, "f"), fill('b', pageSize), pageSize, false)
	want, _ := os.ReadFile(filepath.Join(mnt, "f"))
	if _, _, err := c.Cut(rand.New(rand.NewPCG(1, 2)), 1); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(lower, "f")); !bytes.Equal(got, want) {
		t.Errorf("with every page kept the file changed")
	}
}

func TestCutSomePages(t *testing.T) {
	c, mnt, lower := mounted(t)
	const pages = 64
	writeAt(t, filepath.Join(mnt, "f"), fill('a', pages*pageSize), 0, true)
	for i := 0; i < pages; i++ {
		writeAt(t, filepath.Join(mnt, "f"), fill('b', pageSize), int64(i)*pageSize, false)
	}
	kept, reverted, err := c.Cut(rand.New(rand.NewPCG(3, 4)), 0.5)
	if err != nil || kept+reverted != pages || kept == 0 || reverted == 0 {
		t.Fatalf("Cut = %d kept, %d reverted, %v; want a mix of %d", kept, reverted, err, pages)
	}
	got, _ := os.ReadFile(filepath.Join(lower, "f"))
	var b int
	for i := 0; i < pages; i++ {
		page := got[i*pageSize : (i+1)*pageSize]
		switch {
		case bytes.Equal(page, fill('b', pageSize)):
			b++
		case !bytes.Equal(page, fill('a', pageSize)):
			t.Fatalf("page %d is neither the old nor the new contents", i)
		}
	}
	if b != kept {
		t.Errorf("%d pages hold the new contents, Cut kept %d", b, kept)
	}
}

func TestMetadataIsDurable(t *testing.T) {
	c, mnt, lower := mounted(t)
	writeAt(t, filepath.Join(mnt, "f"), fill('a', 4*pageSize), 0, true)
	writeAt(t, filepath.Join(mnt, "f"), fill('b', pageSize), 3*pageSize, false)
	if err := os.Truncate(filepath.Join(mnt, "f"), 2*pageSize); err != nil {
		t.Fatal(err)
	}
	writeAt(t, filepath.Join(mnt, "old"), fill('o', pageSize), 0, false)
	writeAt(t, filepath.Join(mnt, "new"), fill('n', pageSize), 0, true)
	if err := os.Rename(filepath.Join(mnt, "new"), filepath.Join(mnt, "old")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Cut(rand.New(rand.NewPCG(1, 2)), 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(lower, "f")); !bytes.Equal(got, fill('a', 2*pageSize)) {
		t.Errorf("f after truncate and cut: %d bytes, want 2 pages of a", len(got))
	}
	if got, _ := os.ReadFile(filepath.Join(lower, "old")); !bytes.Equal(got, fill('n', pageSize)) {
		t.Errorf("a renamed, synced file lost its data in the cut")
	}
}

func TestMsyncIsDurable(t *testing.T) {
	c, mnt, lower := mounted(t)
	path := filepath.Join(mnt, "m")
	writeAt(t, path, fill('a', 2*pageSize), 0, true)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 2*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	copy(m, fill('m', pageSize))
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	copy(m[pageSize:], fill('u', pageSize)) // never synced
	if err := unix.Munmap(m); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Cut(rand.New(rand.NewPCG(1, 2)), 0); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(lower, "m"))
	if !bytes.Equal(got[:pageSize], fill('m', pageSize)) {
		t.Errorf("the msynced page did not survive the cut")
	}
	if bytes.Equal(got[pageSize:], fill('u', pageSize)) {
		t.Errorf("a mapped page never synced survived a cut that keeps nothing")
	}
}

func TestWriteOnlyHandle(t *testing.T) {
	c, mnt, lower := mounted(t)
	path := filepath.Join(mnt, "w")
	writeAt(t, path, fill('a', pageSize), 0, true)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fill('b', pageSize), 0); err != nil {
		t.Fatalf("write through a write-only handle: %v", err)
	}
	f.Close()
	if _, _, err := c.Cut(rand.New(rand.NewPCG(1, 2)), 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(lower, "w")); !bytes.Equal(got, fill('a', pageSize)) {
		t.Errorf("an unsynced write through a write-only handle survived the cut")
	}
}
