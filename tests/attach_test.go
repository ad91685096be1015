package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fuseSite starts a site with its FUSE mount under a temp dir.
func fuseSite(t *testing.T) (*site, string) {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "fuse")
	s := newSite(t, "alpha", "--fuse", mnt)
	s.start()
	return s, mnt
}

// attachLoop runs tandem attach --loop and returns the device; it is
// detached in t.Cleanup when the test has not done so.
func attachLoop(t *testing.T, s *site, name string) string {
	t.Helper()
	dev := strings.TrimSpace(s.mustTandem("attach", name, "--loop"))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("attach printed %q, want /dev/loopN", dev)
	}
	t.Cleanup(func() { runCmd(t, time.Minute, tandemBin, "detach", dev) })
	return dev
}

// writeTree writes files of random content under dir and returns their
// SHA-256 by relative path.
func writeTree(t *testing.T, dir string, files int) map[string]string {
	t.Helper()
	sums := map[string]string{}
	r := rand.New(rand.NewPCG(7, 11))
	for i := 0; i < files; i++ {
		rel := filepath.Join(fmt.Sprintf("d%d", i%5), fmt.Sprintf("f%03d.bin", i))
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1+r.IntN(300<<10))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		sums[rel] = hex.EncodeToString(h[:])
	}
	return sums
}

func checkTree(t *testing.T, dir string, sums map[string]string) {
	t.Helper()
	for rel, want := range sums {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatalf("read %s: %v", rel, err)
		}
		h := sha256.Sum256(b)
		if got := hex.EncodeToString(h[:]); got != want {
			t.Fatalf("%s: sha256 %s, want %s", rel, got, want)
		}
	}
}

// TestAttachLoopExt4: a disk attached through the FUSE file and a loop
// device carries an ext4 file system: files written, synced, unmounted,
// detached, checked by fsck, re-attached and read back by checksum; the
// journal holds the writes.
func TestAttachLoopExt4(t *testing.T) {
	s, mnt := fuseSite(t)
	s.mustTandem("disk", "create", "vol1", "--size", "256M")
	if st, err := os.Stat(filepath.Join(mnt, "disks", "vol1")); err != nil || st.Size() != 256<<20 {
		t.Fatalf("FUSE file: %v size %v, want 256 MiB", err, st)
	}
	dev := attachLoop(t, s, "vol1")
	mustRun(t, "mkfs.ext4", "-q", "-F", dev)
	fsdir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(fsdir, 0o755)
	mustRun(t, "mount", dev, fsdir)
	sums := writeTree(t, fsdir, 60)
	mustRun(t, "sync")
	mustRun(t, "umount", fsdir)
	s.mustTandem("detach", dev)
	mustRun(t, "fsck.ext4", "-fn", filepath.Join(mnt, "disks", "vol1"))

	var di struct {
		JournalHead uint64 `json:"journal_head"`
	}
	json.Unmarshal([]byte(s.mustTandem("disk", "info", "vol1", "--json")), &di)
	if di.JournalHead < 20 {
		t.Fatalf("journal head %d after mkfs and 60 files, want the writes journaled", di.JournalHead)
	}

	dev = attachLoop(t, s, "vol1")
	mustRun(t, "mount", "-o", "ro", dev, fsdir)
	checkTree(t, fsdir, sums)
	mustRun(t, "umount", fsdir)
	s.mustTandem("detach", dev)

	// The same bytes through NBD.
	img := filepath.Join(t.TempDir(), "copy.img")
	mustRun(t, "nbdcopy", s.uri("vol1"), img)
	mustRun(t, "fsck.ext4", "-fn", img)
}

// TestAttachNBDWithoutKernelModule: on a kernel without NBD, attach --nbd
// exits 1 and says so, pointing to --loop.
func TestAttachNBDWithoutKernelModule(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Fatalf("this test expects a kernel without NBD; /sys/module/nbd exists")
	}
	s, _ := fuseSite(t)
	s.mustTandem("disk", "create", "vol1", "--size", "16M")
	s.wantFail(1, "--loop", "attach", "vol1", "--nbd")
}

// TestKillDaemonWithLoopAttached: kill -9 the daemon under an attached
// loop device; the next start clears the stale mount and serves again.
func TestKillDaemonWithLoopAttached(t *testing.T) {
	s, mnt := fuseSite(t)
	s.mustTandem("disk", "create", "vol1", "--size", "64M")
	dev := attachLoop(t, s, "vol1")
	mustRun(t, "sh", "-c", "dd if=/dev/urandom of=/tmp/tandem-kill-src bs=1M count=8 status=none")
	t.Cleanup(func() { os.Remove("/tmp/tandem-kill-src") })
	mustRun(t, "dd", "if=/tmp/tandem-kill-src", "of="+dev, "bs=1M", "oflag=direct", "conv=fsync", "status=none")
	s.kill()
	// The loop device now points at a dead FUSE file; detach it.
	runCmd(t, time.Minute, tandemBin, "detach", dev)
	s.start()
	st, err := os.Stat(filepath.Join(mnt, "disks", "vol1"))
	if err != nil || st.Size() != 64<<20 {
		t.Fatalf("after restart, FUSE file: %v %v", err, st)
	}
	mustRun(t, "cmp", "-n", fmt.Sprint(8<<20), "/tmp/tandem-kill-src", filepath.Join(mnt, "disks", "vol1"))
	dev = attachLoop(t, s, "vol1")
	mustRun(t, "cmp", "-n", fmt.Sprint(8<<20), "/tmp/tandem-kill-src", dev)
	s.mustTandem("detach", dev)
}
