package attach_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/attach"
	"github.com/tandem-dr/tandem/fusefs"
	"github.com/tandem-dr/tandem/internal/aligned"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs a command that must succeed and returns its output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// attachLoop attaches path and detaches it at the end of the test.
func attachLoop(t *testing.T, path string, opts attach.LoopOptions) string {
	t.Helper()
	dev, err := attach.Loop(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("Loop(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := attach.Detach(context.Background(), dev); err != nil && !errors.Is(err, attach.ErrNotAttached) {
			t.Errorf("Detach(%s): %v", dev, err)
		}
	})
	return dev
}

// alignedBuf returns an n-byte buffer aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	var scratch []byte
	return aligned.Buf(&scratch, n)
}

func TestLoopAttachDetach(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0x5a}, 16*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	dev, err := attach.Loop(context.Background(), path, attach.LoopOptions{DirectIO: true})
	if err != nil {
		t.Fatalf("Loop: %v", err)
	}
	detached := false
	t.Cleanup(func() {
		if !detached {
			attach.Detach(context.Background(), dev)
		}
	})

	if out := run(t, "losetup", "-l", "-n", "-O", "NAME,BACK-FILE,DIO", dev); !strings.Contains(out, path) || !strings.HasSuffix(strings.TrimSpace(out), "1") {
		t.Errorf("losetup -l: got %q, want %s on %s with DIO 1", out, dev, path)
	}
	st, err := attach.LoopStatus(dev)
	if err != nil {
		t.Fatal(err)
	}
	if st.BackingFile != path || st.Size != 16*mib || !st.DirectIO || st.ReadOnly || st.AutoClear {
		t.Errorf("LoopStatus: got %+v, want %s, %d bytes, direct I/O, read-write, no autoclear", st, path, 16*mib)
	}
	sysSize, _ := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/size")
	if got, want := strings.TrimSpace(string(sysSize)), fmt.Sprint(16*mib/512); got != want {
		t.Errorf("/sys/block/%s/size: got %s, want %s", filepath.Base(dev), got, want)
	}

	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := alignedBuf(mib)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	if n, err := unix.Pwrite(fd, buf, 3*mib); err != nil || n != mib {
		t.Fatalf("write to %s: got %d, %v", dev, n, err)
	}
	if err := unix.Fsync(fd); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)

	if err := attach.Detach(context.Background(), dev); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	detached = true
	if _, err := attach.LoopStatus(dev); !errors.Is(err, attach.ErrNotAttached) {
		t.Errorf("LoopStatus after Detach: got %v, want ErrNotAttached", err)
	}
	if err := attach.Detach(context.Background(), dev); !errors.Is(err, attach.ErrNotAttached) {
		t.Errorf("second Detach: got %v, want ErrNotAttached", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[3*mib:4*mib], buf) {
		t.Errorf("file after detach does not hold what was written through %s", dev)
	}
	if data[0] != 0x5a || data[4*mib] != 0x5a {
		t.Errorf("file outside the written range changed")
	}
}

func TestLoopReadOnlyAndAutoClear(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 4*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := attach.LoopFile(context.Background(), path, attach.LoopOptions{ReadOnly: true, AutoClear: true, BlockSize: 4096})
	if err != nil {
		t.Fatalf("LoopFile: %v", err)
	}
	dev := f.Name()
	t.Cleanup(func() { attach.Detach(context.Background(), dev) })
	st, err := attach.LoopStatus(dev)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ReadOnly || !st.AutoClear {
		t.Errorf("LoopStatus: got %+v, want read-only with autoclear", st)
	}
	lbs, _ := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/queue/logical_block_size")
	if got := strings.TrimSpace(string(lbs)); got != "4096" {
		t.Errorf("logical block size: got %s, want 4096", got)
	}
	if w, err := os.OpenFile(dev, os.O_RDWR, 0); err == nil {
		if _, err := w.WriteAt(make([]byte, 4096), 0); err == nil {
			t.Errorf("writing to a read-only loop device succeeded")
		}
		w.Close()
	}
	// Autoclear: the last close detaches the device.
	if _, err := f.WriteAt([]byte{1}, 0); err == nil {
		t.Errorf("write to a read-only loop device succeeded")
	}
	f.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := attach.LoopStatus(dev)
		if errors.Is(err, attach.ErrNotAttached) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("autoclear device %s still attached after its last close (%v)", dev, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDetachUnder(t *testing.T) {
	dir := t.TempDir()
	var devs []string
	for _, name := range []string{"a", "b"} {
		p := filepath.Join(dir, "sub", name)
		writeFile(t, p, strings.Repeat("x", mib))
		devs = append(devs, attachLoop(t, p, attach.LoopOptions{}))
	}
	other := filepath.Join(t.TempDir(), "c")
	writeFile(t, other, strings.Repeat("x", mib))
	keep := attachLoop(t, other, attach.LoopOptions{})

	got, err := attach.DetachUnder(context.Background(), filepath.Join(dir, "sub"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !(got[0] == devs[0] && got[1] == devs[1] || got[0] == devs[1] && got[1] == devs[0]) {
		t.Errorf("DetachUnder: got %v, want %v", got, devs)
	}
	if _, err := attach.LoopStatus(keep); err != nil {
		t.Errorf("device outside the directory: %v, want still attached", err)
	}
}

// imageFile is a temp file as a fusefs.File.
type imageFile struct {
	*os.File
	size int64
}

func (f imageFile) Size() int64                     { return f.size }
func (f imageFile) Flush(ctx context.Context) error { return f.Sync() }
func (f imageFile) Trim(off, length int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

// TestExt4OnFUSELoop runs a file system on a loop device over a fusefs
// file: mkfs, mount, files with checksums, umount, fsck, detach, then
// again to check every file.
func TestExt4OnFUSELoop(t *testing.T) {
	tmp := t.TempDir()
	img, err := os.Create(filepath.Join(tmp, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	const size = 256 * mib
	if err := img.Truncate(size); err != nil {
		t.Fatal(err)
	}
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "d0", File: imageFile{img, size}})
	mnt := filepath.Join(tmp, "fuse")
	fsys, err := fusefs.Mount(context.Background(), mnt, &set, fusefs.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := fsys.Unmount(ctx); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	file := filepath.Join(mnt, "disks", "d0")
	dir := filepath.Join(tmp, "ext4")
	os.Mkdir(dir, 0o755)

	dev := attachLoop(t, file, attach.LoopOptions{DirectIO: true})
	if st, _ := attach.LoopStatus(dev); !st.DirectIO {
		t.Errorf("loop over the FUSE file: direct I/O off, want on")
	}
	run(t, "mkfs.ext4", "-q", "-F", dev)
	run(t, "mount", dev, dir)
	sums := map[string][32]byte{}
	for i := range 40 {
		p := filepath.Join(dir, fmt.Sprintf("d%d", i%5), fmt.Sprintf("f%d", i))
		data := bytes.Repeat([]byte(fmt.Sprintf("file %d ", i)), 1000*(i+1))
		writeFile(t, p, string(data))
		sums[p] = sha256.Sum256(data)
	}
	run(t, "sync")
	run(t, "umount", dir)
	run(t, "fsck.ext4", "-f", "-n", dev)
	if err := attach.Detach(context.Background(), dev); err != nil {
		t.Fatal(err)
	}

	dev = attachLoop(t, file, attach.LoopOptions{DirectIO: true})
	run(t, "mount", "-o", "ro", dev, dir)
	defer run(t, "umount", dir)
	for p, want := range sums {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("read %s: %v", p, err)
			continue
		}
		if got := sha256.Sum256(data); got != want {
			t.Errorf("%s: checksum differs after re-attach", p)
		}
	}
}
