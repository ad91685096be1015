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

// fullSecondaryPair starts a paired primary and secondary whose data
// directory is on a 1 GiB ext4 file system that a filler file of the
// given size takes room from; removing the filler makes room.
func fullSecondaryPair(t *testing.T, fillerSize string) (pri, sec *site, filler string) {
	t.Helper()
	mnt := mountSmallFS(t, "1G")
	filler = filepath.Join(mnt, "filler")
	mustRun(t, "fallocate", "-l", fillerSize, filler)
	sec = newSiteAt(t, "beta", filepath.Join(mnt, "data"))
	sec.start()
	pri = newSite(t, "alpha")
	pri.start()
	pri.mustTandem("pair", "add", strings.TrimSpace(sec.mustTandem("pair", "token")))
	return pri, sec, filler
}

// TestFullSecondaryDisk: when the secondary's file system fills up under
// replication, the primary keeps taking writes and holds what is not
// acknowledged; the secondary stays up, says why, and keeps the replica at
// its last consistent point. Once there is room again replication goes
// on by itself and the replica ends identical.
func TestFullSecondaryDisk(t *testing.T) {
	// 1 GiB, less the journal's 256 MiB reserve and a 450 MiB filler,
	// leaves the secondary about 280 MiB: too little for the 200 MiB
	// store and 200 MiB journal of the writes below.
	pri, sec, filler := fullSecondaryPair(t, "450M")
	pri.mustTandem("disk", "create", "vol1", "--size", "256M")
	pri.mustTandem("protect", "vol1", "--peer", "beta")
	waitCaughtUp(t, pri, "vol1", time.Minute)
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x21 0 8M", "-c", "flush", pri.uri("vol1"))
	waitCaughtUp(t, pri, "vol1", time.Minute)

	src := filepath.Join(t.TempDir(), "src.img")
	mustRun(t, "sh", "-c", "head -c 200M /dev/urandom > "+src)
	mustRun(t, "nbdcopy", "--flush", src, pri.uri("vol1"))

	// The secondary cannot hold it all: replication stalls, with a reason.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(sec.daemon.output(), "space") {
		if time.Now().After(deadline) {
			t.Fatalf("the secondary never reported the full file system:\n%s", sec.daemon.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	st := pri.status("vol1")
	if st.AckedPoint >= st.NewestPoint {
		t.Fatalf("the secondary acknowledged everything on a full file system: %+v", st)
	}
	if sec.daemon.exited() {
		t.Fatalf("the secondary died on a full file system:\n%s", sec.daemon.output())
	}
	// Its replica still reads, at its last consistent point.
	mustRun(t, "qemu-io", "-f", "raw", "-r", "-c", "read 0 256M", sec.uri("vol1@latest"))
	// The primary's operator sees why, every time it retries, not a
	// dropped link.
	for i := range 15 {
		out := pri.mustTandem("status", "vol1")
		if !strings.Contains(out, "no space left") {
			t.Fatalf("status %d: the primary does not say the secondary is full:\n%s", i, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("full: acked %d of %d; secondary says: %s", st.AckedPoint, st.NewestPoint, lastLineWith(sec.daemon.output(), "space"))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, pri, "vol1", 2*time.Minute)
	compareReplica(t, pri, sec, "vol1")
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, sec.uri("vol1@latest"))
}

// lastLineWith returns the last line of out that contains s.
func lastLineWith(out, s string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}

// TestFullSecondaryDuringSync: the secondary's file system fills up
// during the initial sync; the primary is told why and retries, the
// replica stays consistent, and once there is room the sync finishes by
// itself and the replica is identical.
func TestFullSecondaryDuringSync(t *testing.T) {
	pri, sec, filler := fullSecondaryPair(t, "600M")
	pri.mustTandem("disk", "create", "vol1", "--size", "512M")
	src := filepath.Join(t.TempDir(), "src.img")
	mustRun(t, "sh", "-c", "head -c 300M /dev/urandom > "+src)
	mustRun(t, "nbdcopy", "--flush", src, pri.uri("vol1"))
	pri.mustTandem("protect", "vol1", "--peer", "beta")

	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(pri.mustTandem("status", "vol1"), "no space left") {
		if time.Now().After(deadline) {
			t.Fatalf("the primary never said the secondary is full:\n%s\n%s", pri.mustTandem("status", "vol1"), sec.daemon.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("full during sync: %s", pri.mustTandem("status", "vol1"))
	if sec.daemon.exited() {
		t.Fatalf("the secondary died on a full file system:\n%s", sec.daemon.output())
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, pri, "vol1", 3*time.Minute)
	compareReplica(t, pri, sec, "vol1")
}
