package fusefs_test

import (
	"bufio"
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

	"github.com/tandem-dr/tandem/fusefs"
)

// childEnv names the mount point a re-executed test binary mounts and
// then serves until it is killed.
const childEnv = "FUSEFS_TEST_CHILD_MOUNT"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(childMount(dir))
	}
	os.Exit(m.Run())
}

// childMount mounts one disk at dir, says "ready" and waits to be killed.
func childMount(dir string) int {
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "d0", File: newMemFile(mib)})
	if _, err := fusefs.Mount(context.Background(), dir, &set, fusefs.Options{}, nil); err != nil {
		fmt.Println("mount:", err)
		return 1
	}
	fmt.Println("ready")
	select {}
}

// killedMount leaves a stale mount at a new directory: a child process
// mounts it and is killed with SIGKILL. holdOpen keeps a file of the mount
// open across the kill, as a loop device would.
func killedMount(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		syscall.Unmount(dir, syscall.MNT_DETACH)
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("child mount: got %q, %v; want ready", line, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "disks", "d0")); err != nil {
		t.Fatalf("child's mount does not serve: %v", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("statfs of a killed mount: got %v, want ENOTCONN", err)
	}
	return dir
}

func TestClearStale(t *testing.T) {
	dir := killedMount(t)
	if err := fusefs.ClearStale(dir); err != nil {
		t.Fatalf("ClearStale: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("stat after ClearStale: %v", err)
	}
	if mounted(t, dir) {
		t.Errorf("%s still mounted after ClearStale", dir)
	}
	// Clearing a healthy directory, or a missing one, does nothing.
	if err := fusefs.ClearStale(dir); err != nil {
		t.Errorf("ClearStale of a plain directory: %v", err)
	}
	if err := fusefs.ClearStale(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("ClearStale of a missing directory: %v", err)
	}
}

func TestMountOverStale(t *testing.T) {
	dir := killedMount(t)
	m := newMemFile(mib)
	var set fusefs.Set
	set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: "d1", File: m})
	fsys, err := fusefs.Mount(context.Background(), dir, &set, fusefs.Options{}, nil)
	if err != nil {
		t.Fatalf("Mount over a stale mount: %v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := fsys.Unmount(ctx); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	}()
	f, err := os.OpenFile(filepath.Join(dir, "disks", "d1"), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open through the new mount: %v", err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("usable"), 0); err != nil {
		t.Fatalf("write through the new mount: %v", err)
	}
	if got := string(m.snapshot()[:6]); got != "usable" {
		t.Errorf("File after write: got %q, want %q", got, "usable")
	}
}
