package attach_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/attach"
	"github.com/tandem-dr/tandem/fusefs"
	"golang.org/x/sys/unix"
)

// childEnv holds "IMAGE:MOUNT" for a re-executed test binary that serves
// IMAGE through fusefs at MOUNT until it is killed, as a daemon would.
const childEnv = "ATTACH_TEST_CHILD_FUSE"

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		img, mnt, _ := strings.Cut(v, ":")
		os.Exit(serveImage(img, mnt))
	}
	os.Exit(m.Run())
}

func serveImage(img, mnt string) int {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	st, _ := f.Stat()
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "d0", File: imageFile{f, st.Size()}})
	if _, err := fusefs.Mount(context.Background(), mnt, &set, fusefs.Options{}, nil); err != nil {
		fmt.Println("mount:", err)
		return 1
	}
	fmt.Println("ready")
	select {}
}

// TestRecoverAfterKilledServer kills the process serving a FUSE file
// while a loop device is attached to it, then recovers as the daemon does
// at its next start: detach the loop devices left on the mount, clear the
// stale mount, mount again and re-attach; what was synced before the kill
// is there.
func TestRecoverAfterKilledServer(t *testing.T) {
	tmp := t.TempDir()
	img := filepath.Join(tmp, "disk.img")
	if err := os.WriteFile(img, make([]byte, 16*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(tmp, "fuse")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+img+":"+mnt)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); syscall.Unmount(mnt, syscall.MNT_DETACH) })
	if line, err := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("child: got %q, %v; want ready", line, err)
	}
	file := filepath.Join(mnt, "disks", "d0")
	dev := attachLoop(t, file, attach.LoopOptions{DirectIO: true})

	want := bytes.Repeat([]byte("synced!!"), 512)
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := alignedBuf(len(want))
	copy(buf, want)
	if _, err := unix.Pwrite(fd, buf, mib); err != nil {
		t.Fatalf("write before kill: %v", err)
	}
	if err := unix.Fsync(fd); err != nil {
		t.Fatalf("fsync before kill: %v", err)
	}
	unix.Close(fd)

	cmd.Process.Kill()
	cmd.Wait()
	fd, err = unix.Open(dev, unix.O_RDONLY|unix.O_DIRECT, 0)
	if err == nil {
		if _, err := unix.Pread(fd, buf, 0); err == nil {
			t.Errorf("read from a loop device whose FUSE server is dead succeeded")
		}
		unix.Close(fd)
	}

	// Recovery, in the daemon's order.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	detached, err := attach.DetachUnder(ctx, mnt)
	if err != nil || len(detached) != 1 || detached[0] != dev {
		t.Fatalf("DetachUnder: got %v, %v; want [%s]", detached, err, dev)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "d0", File: imageFile{f, 16 * mib}})
	fsys, err := fusefs.Mount(ctx, mnt, &set, fusefs.Options{}, nil)
	if err != nil {
		t.Fatalf("Mount over the killed server's mount: %v", err)
	}
	defer func() {
		if err := fsys.Unmount(ctx); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	}()
	dev = attachLoop(t, file, attach.LoopOptions{DirectIO: true})
	defer attach.Detach(ctx, dev) // before Unmount, which would wait for it
	got := make([]byte, len(want))
	g, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	_, err = g.ReadAt(got, mib)
	g.Close()
	if err != nil {
		t.Fatalf("read after recovery: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("data synced before the kill: got %q…, want %q…", got[:16], want[:16])
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("recovery took longer than 30s")
	}
}
