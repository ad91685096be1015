package journaltest

import (
	"bufio"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// KillChild runs the test binary again as a child with env set to val (the
// child's TestMain or init sees it and does the work), hands every line the
// child prints to onLine as fields, and kills the child with SIGKILL at a
// random moment up to maxDelay after its first line. It returns once the
// child is dead and every line has been handed over, so onLine's state may
// be read without locking. A child that ends by itself fails the test.
func KillChild(t testing.TB, env, val string, maxDelay time.Duration, onLine func(fields []string)) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+val)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	started := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for first := true; sc.Scan(); {
			if first {
				close(started)
				first = false
			}
			onLine(strings.Fields(sc.Text()))
		}
	}()
	select {
	case <-started:
	case <-done:
	case <-time.After(30 * time.Second):
	}
	time.Sleep(time.Duration(rand.Int64N(int64(maxDelay))))
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill child: %v", err)
	}
	<-done
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("child ended by itself (%v) instead of being killed", err)
	}
}
