package attach_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/attach"
	"golang.org/x/sys/unix"
)

// kernelHasNBD reports whether the nbd driver is loaded or installed.
func kernelHasNBD(t *testing.T) bool {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return true
	}
	_, err := attach.FindModule("/lib/modules/"+release(t), "nbd")
	return err == nil
}

// TestNBD connects the kernel's NBD client to a small in-process server
// where the kernel has one; on a kernel without (this appliance's), it
// checks that NBD says so: an error wrapping ErrNoKernelNBD that names
// the kernel and points to --loop.
func TestNBD(t *testing.T) {
	if kernelHasNBD(t) {
		if err := attach.LoadNBD(context.Background()); err != nil {
			t.Fatalf("LoadNBD: %v", err)
		}
		testNBDKernel(t)
		return
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
	if err := attach.LoadNBD(context.Background()); !errors.Is(err, attach.ErrNoKernelNBD) || !strings.Contains(err.Error(), "--loop") {
		t.Errorf("LoadNBD: got %v, want ErrNoKernelNBD pointing to --loop", err)
	}
	if _, err := tcp.Write([]byte("x")); err == nil {
		t.Errorf("NBD left the connection open; it takes it over")
	}
}

// testNBDKernel attaches /dev/nbdN to a memory-backed server, writes
// through the device and detaches.
func testNBDKernel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mem := make([]byte, 4*mib)
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		served <- serveNBD(c, mem)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	const hasFlags, sendFlush = 1, 4
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dev, err := attach.NBD(ctx, c, int64(len(mem)), hasFlags|sendFlush, attach.NBDOptions{BlockSize: 4096})
	if err != nil {
		t.Fatalf("NBD: %v", err)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		attach.Detach(ctx, dev)
		t.Fatal(err)
	}
	_, werr := f.WriteAt([]byte("through the kernel"), 8192)
	serr := f.Sync()
	f.Close()
	if werr != nil || serr != nil {
		t.Errorf("write and sync %s: %v, %v", dev, werr, serr)
	}
	if err := attach.Detach(ctx, dev); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("server: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the kernel did not disconnect after Detach")
	}
	if got := string(mem[8192 : 8192+18]); got != "through the kernel" {
		t.Errorf("server memory: got %q, want %q", got, "through the kernel")
	}
}

// serveNBD answers the kernel's transmission-phase requests on c from
// mem (simple replies) until NBD_CMD_DISC.
func serveNBD(c net.Conn, mem []byte) error {
	var req [28]byte
	for {
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		if binary.BigEndian.Uint32(req[0:]) != 0x25609513 {
			return errors.New("bad request magic")
		}
		typ := binary.BigEndian.Uint16(req[6:])
		off, n := binary.BigEndian.Uint64(req[16:]), binary.BigEndian.Uint32(req[24:])
		if typ == 2 { // NBD_CMD_DISC
			return nil
		}
		if off+uint64(n) > uint64(len(mem)) {
			return fmt.Errorf("request past the end: %d+%d", off, n)
		}
		reply := binary.BigEndian.AppendUint32(nil, 0x67446698)
		reply = binary.BigEndian.AppendUint32(reply, 0)
		reply = append(reply, req[8:16]...)
		switch typ {
		case 0: // READ
			reply = append(reply, mem[off:off+uint64(n)]...)
		case 1: // WRITE
			if _, err := io.ReadFull(c, mem[off:off+uint64(n)]); err != nil {
				return fmt.Errorf("read write payload: %w", err)
			}
		}
		if _, err := c.Write(reply); err != nil {
			return fmt.Errorf("reply: %w", err)
		}
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
