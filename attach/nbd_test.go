package attach_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/tandem-dr/tandem/attach"
	"golang.org/x/sys/unix"
)

// TestNBDWithoutKernelClient checks what NBD says on a kernel without an
// NBD client (this appliance kernel): an error wrapping ErrNoKernelNBD
// that names the kernel and points to --loop.
func TestNBDWithoutKernelClient(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Fatal("this kernel has an NBD client: the test expects the appliance kernel without one")
	}
	if _, err := os.Stat("/lib/modules/" + release(t)); err == nil {
		t.Fatalf("/lib/modules/%s exists: the test expects the appliance kernel without modules", release(t))
	}
	tcp := dialLoopback(t)
	_, err := attach.NBD(context.Background(), tcp, 1<<30, 0, attach.NBDOptions{})
	if !errors.Is(err, attach.ErrNoKernelNBD) {
		t.Fatalf("NBD: got %v, want ErrNoKernelNBD", err)
	}
	msg := err.Error()
	for _, want := range []string{"has no NBD client", release(t), "--loop"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not contain %q", msg, want)
		}
	}
	if _, err := tcp.Write([]byte("x")); err == nil {
		t.Errorf("NBD left the connection open; it takes it over")
	}
}

func TestNBDBadArguments(t *testing.T) {
	for _, c := range []struct {
		name string
		size int64
		opts attach.NBDOptions
	}{
		{"zero size", 0, attach.NBDOptions{}},
		{"odd block size", 1 << 20, attach.NBDOptions{BlockSize: 1000}},
		{"not an nbd device", 1 << 20, attach.NBDOptions{Device: "/dev/sda"}},
	} {
		_, err := attach.NBD(context.Background(), dialLoopback(t), c.size, 0, c.opts)
		if err == nil || errors.Is(err, attach.ErrNoKernelNBD) {
			t.Errorf("%s: got %v, want an argument error", c.name, err)
		}
	}
}

func TestDetachNotADevice(t *testing.T) {
	for _, dev := range []string{"/dev/sda", "/dev/nbd99999", "/dev/null"} {
		if err := attach.Detach(context.Background(), dev); !errors.Is(err, attach.ErrNotAttached) {
			t.Errorf("Detach(%s): got %v, want ErrNotAttached", dev, err)
		}
	}
}

func release(t *testing.T) string {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

// dialLoopback returns a TCP connection to a listener that accepts and
// holds it.
func dialLoopback(t *testing.T) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return c
}
