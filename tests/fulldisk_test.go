package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mountSmallFS makes a small ext4 file system on a loop device and mounts
// it under the test's temp dir; it is unmounted in t.Cleanup.
func mountSmallFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "truncate", "-s", size, img)
	mustRun(t, "mkfs.ext4", "-q", "-F", img)
	mustRun(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() {
		runCmd(t, time.Minute, "umount", "-l", mnt)
	})
	return mnt
}

// TestFullDataDisk: when the data directory's file system fills up, the
// write that does not fit gets an NBD error; everything flushed before it
// is intact, the daemon keeps serving reads, and writes work again once
// there is room.
func TestFullDataDisk(t *testing.T) {
	// The journal keeps 256 MiB free for itself (a full file system must
	// fail writes, not fault badger's mapped files), so the file system
	// has that much more than the data the test writes.
	mnt := mountSmallFS(t, "700M")
	s := newSiteAt(t, "alpha", filepath.Join(mnt, "data"))
	s.start()
	s.mustTandem("disk", "create", "vol1", "--size", "1G")
	s.mustTandem("disk", "create", "spare", "--size", "64M")
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 16M", "-c", "flush", s.uri("vol1"))
	// Fill the spare disk so removing it later frees room.
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 40M", "-c", "flush", s.uri("spare"))

	r := runCmd(t, 5*time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x77 64M 900M", "-c", "flush", s.uri("vol1"))
	if r.Code == 0 && !strings.Contains(r.Stdout+r.Stderr, "failed") {
		t.Fatalf("writing 900 MiB to a 700 MiB file system succeeded:\n%s%s", r.Stdout, r.Stderr)
	}
	t.Logf("full disk: %s", strings.TrimSpace(r.Stdout+r.Stderr))
	if s.daemon.exited() {
		t.Fatalf("daemon died on a full disk:\n%s", s.daemon.output())
	}
	mustRun(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 0 16M", s.uri("vol1"))
	s.mustTandem("status")

	s.mustTandem("disk", "rm", "spare")
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 16M 1M", "-c", "flush", s.uri("vol1"))
	mustRun(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 0 16M", "-c", "read -P 0x33 16M 1M", s.uri("vol1"))
	s.stop()
	s.start()
	mustRun(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 0 16M", "-c", "read -P 0x33 16M 1M", s.uri("vol1"))
}
