package tests

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/nbd/nbdtest"
)

// nbdServe starts `tandem nbd serve FILE --socket S ARGS...` on a new sparse
// file of size bytes (init, when set, fills it first) and returns the file,
// the socket and its nbd+unix URI.
func nbdServe(t *testing.T, size int64, init func(f *os.File), args ...string) (file, sock, uri string) {
	t.Helper()
	dir := t.TempDir()
	file = filepath.Join(dir, "disk.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if init != nil {
		init(f)
	}
	f.Close()
	sock = filepath.Join(dir, "nbd.sock")
	p := startProc(t, tandemBin, append([]string{"nbd", "serve", file, "--socket", sock}, args...)...)
	waitSocket(t, "unix", sock, p)
	return file, sock, "nbd+unix:///?socket=" + sock
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

const mib = 1 << 20

func TestNBDInfoSizeCanMap(t *testing.T) {
	// Data at [1M,3M) and [8M,9M); holes elsewhere.
	_, _, uri := nbdServe(t, 16*mib, func(f *os.File) {
		f.WriteAt(bytes.Repeat([]byte{1}, 2*mib), 1*mib)
		f.WriteAt(bytes.Repeat([]byte{2}, mib), 8*mib)
	})
	if got := strings.TrimSpace(mustRun(t, "nbdinfo", "--size", uri)); got != strconv.Itoa(16*mib) {
		t.Fatalf("nbdinfo --size = %q, want %d", got, 16*mib)
	}
	for _, can := range []string{"flush", "fua", "trim", "zero", "fast-zero", "multi-conn", "cache", "df", "structured-reply", "write"} {
		if r := runCmd(t, time.Minute, "nbdinfo", "--can", can, uri); r.Code != 0 {
			t.Errorf("nbdinfo --can %s: exit %d, want 0 (%s)", can, r.Code, r.Stderr)
		}
	}
	if r := runCmd(t, time.Minute, "nbdinfo", "--is", "readonly", uri); r.Code == 0 {
		t.Errorf("nbdinfo --is readonly: exit 0 for a writable export")
	}
	got := mustRun(t, "nbdinfo", "--map", uri)
	want := [][3]string{
		{"0", "1048576", "3"},
		{"1048576", "2097152", "0"},
		{"3145728", "5242880", "3"},
		{"8388608", "1048576", "0"},
		{"9437184", "7340032", "3"},
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != len(want) {
		t.Fatalf("nbdinfo --map:\n%s\nwant %d extents %v", got, len(want), want)
	}
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != want[i][0] || f[1] != want[i][1] || f[2] != want[i][2] {
			t.Fatalf("nbdinfo --map line %d = %q, want offset %s length %s type %s\n%s", i, l, want[i][0], want[i][1], want[i][2], got)
		}
	}
}

func TestNBDQemuIO(t *testing.T) {
	file, _, uri := nbdServe(t, 16*mib, nil)
	cmds := []string{
		"write -P 0xab 0 1M",
		"read -P 0xab 0 1M",
		"write -P 0x11 3000 70000", // unaligned
		"read -P 0x11 3000 70000",
		"write -z 2M 1M",
		"read -P 0 2M 1M",
		"write -P 0x22 4M 1M",
		"discard 4M 512k",
		"aio_write -P 0x33 8M 64k",
		"aio_write -P 0x34 9M 64k",
		"aio_write -P 0x35 10M 1M",
		"aio_write -P 0x36 12M 4k",
		"aio_flush",
		"read -P 0x33 8M 64k",
		"read -P 0x34 9M 64k",
		"read -P 0x35 10M 1M",
		"read -P 0x36 12M 4k",
		"flush",
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := mustRun(t, "qemu-io", append(args, uri)...)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	// The discard punched a hole: base:allocation reports it.
	if m := mustRun(t, "nbdinfo", "--map", uri); !mapCovers(m, 4*mib, 512<<10, "3") {
		t.Fatalf("nbdinfo --map after discard 4M 512k has no hole there:\n%s", m)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	check := func(off, n int, v byte) {
		t.Helper()
		if !bytes.Equal(b[off:off+n], bytes.Repeat([]byte{v}, n)) {
			t.Fatalf("file bytes [%d,%d) are not %#x", off, off+n, v)
		}
	}
	check(0, 3000, 0xab)
	check(3000, 70000, 0x11)
	check(73000, mib-73000, 0xab)
	check(2*mib, mib, 0)
	check(4*mib, 512<<10, 0) // a punched hole reads as zeroes
	check(4*mib+512<<10, 512<<10, 0x22)
	check(8*mib, 64<<10, 0x33)
	check(10*mib, mib, 0x35)
}

func TestNBDCopyAndCompare(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := randBytes(t, 8*mib)
	full := make([]byte, 32*mib)
	copy(full[4*mib:], data) // data between holes
	if err := os.WriteFile(src, full, 0o644); err != nil {
		t.Fatal(err)
	}
	file, _, uri := nbdServe(t, 32*mib, nil)
	mustRun(t, "nbdcopy", src, uri)
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", file, uri)
	dst := filepath.Join(dir, "dst.img")
	mustRun(t, "nbdcopy", uri, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, full) {
		t.Fatalf("nbdcopy out of the export differs from what was copied in")
	}
	// A changed byte is noticed by qemu-img compare.
	f, _ := os.OpenFile(file, os.O_WRONLY, 0)
	f.WriteAt([]byte{^data[100]}, 4*mib+100)
	f.Close()
	if r := runCmd(t, time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri); r.Code != 1 {
		t.Fatalf("qemu-img compare after a change: exit %d, want 1\n%s", r.Code, r.Stdout)
	}
}

func TestNBDMultiConnAndTCP(t *testing.T) {
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	dir := t.TempDir()
	file := filepath.Join(dir, "disk.img")
	os.WriteFile(file, nil, 0o644)
	os.Truncate(file, 64*mib)
	p := startProc(t, tandemBin, "nbd", "serve", "--listen", addr, "--name", "vol", file)
	waitSocket(t, "tcp", addr, p)
	src := filepath.Join(dir, "src.img")
	data := randBytes(t, 64*mib)
	os.WriteFile(src, data, 0o644)
	uri := "nbd://" + addr + "/vol"
	mustRun(t, "nbdcopy", "--connections=4", "--requests=16", src, uri)
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if got := strings.TrimSpace(mustRun(t, "nbdinfo", "--size", "nbd://"+addr+"/")); got != strconv.Itoa(64*mib) {
		t.Fatalf("default export size %q, want %d", got, 64*mib)
	}
	if r := runCmd(t, time.Minute, "nbdinfo", "--size", "nbd://"+addr+"/other"); r.Code == 0 {
		t.Fatalf("nbdinfo of an unknown export succeeded")
	}
}

func TestNBDSocketActivation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "disk.img")
	os.WriteFile(file, bytes.Repeat([]byte{7}, 3*mib), 0o644)
	out := mustRun(t, "nbdinfo", "--size", "--", "[", tandemBin, "nbd", "serve", file, "]")
	if got := strings.TrimSpace(out); got != strconv.Itoa(3*mib) {
		t.Fatalf("socket-activated nbdinfo --size = %q, want %d", got, 3*mib)
	}
	script := fmt.Sprintf(`
h.connect_systemd_socket_activation([%q, "nbd", "serve", %q])
assert h.pread(4, 0) == b"\x07" * 4
h.pwrite(b"act!", 0)
h.flush()
h.shutdown()
print("OK")
`, tandemBin, file)
	if got := mustRun(t, "nbdsh", "-c", script); !strings.Contains(got, "OK") {
		t.Fatalf("nbdsh socket activation: %s", got)
	}
	b, _ := os.ReadFile(file)
	if string(b[:4]) != "act!" {
		t.Fatalf("write through socket activation not in the file: %q", b[:4])
	}
}

// runScript runs an nbdsh script from testdata/nbd with env set.
func runScript(t *testing.T, name string, env map[string]string) string {
	t.Helper()
	scripts, _ := filepath.Abs("testdata/nbd")
	args := []string{"-c", fmt.Sprintf("exec(open(%q).read())", filepath.Join(scripts, name))}
	cmd := []string{"env", "SCRIPTS=" + scripts}
	for k, v := range env {
		cmd = append(cmd, k+"="+v)
	}
	r := runCmd(t, 3*time.Minute, cmd[0], append(append(cmd[1:], "nbdsh"), args...)...)
	if r.Code != 0 || !strings.Contains(r.Stdout, "\nOK\n") {
		t.Fatalf("nbdsh %s: exit %d\nstdout:\n%s\nstderr:\n%s", name, r.Code, r.Stdout, r.Stderr)
	}
	t.Logf("nbdsh %s:\n%s", name, r.Stdout)
	return r.Stdout
}

func TestNBDBadRequests(t *testing.T) {
	_, sock, uri := nbdServe(t, 64*mib, nil)
	runScript(t, "bad_requests.py", map[string]string{"URI": uri, "SOCK": sock})
}

func TestNBDBadHandshakes(t *testing.T) {
	_, sock, uri := nbdServe(t, 16*mib, nil)
	runScript(t, "handshake.py", map[string]string{"URI": uri, "SOCK": sock})
}

func TestNBDReadOnly(t *testing.T) {
	file, sock, uri := nbdServe(t, 16*mib, func(f *os.File) { f.WriteAt([]byte("keep"), 0) }, "--readonly")
	runScript(t, "readonly.py", map[string]string{"URI": uri, "SOCK": sock})
	b, _ := os.ReadFile(file)
	if string(b[:4]) != "keep" {
		t.Fatalf("read-only export was written: %q", b[:4])
	}
}

func TestNBDTLS(t *testing.T) {
	pki := nbdtest.NewPKI(t)
	other := nbdtest.NewPKI(t)
	_, sock, _ := nbdServe(t, 16*mib, nil,
		"--tls", "required",
		"--tls-cert", filepath.Join(pki.Dir, "server-cert.pem"),
		"--tls-key", filepath.Join(pki.Dir, "server-key.pem"),
		"--tls-ca", filepath.Join(pki.Dir, "ca-cert.pem"))
	runScript(t, "tls.py", map[string]string{
		"URI":         "nbd+unix:///?socket=" + sock,
		"SOCK":        sock,
		"CERTS":       pki.Dir,
		"OTHER_CERTS": other.Dir,
	})
	// nbdinfo with the right CA is served over TLS.
	out := mustRun(t, "nbdinfo", "--size", "nbds+unix:///?socket="+sock+"&tls-certificates="+pki.Dir)
	if strings.TrimSpace(out) != strconv.Itoa(16*mib) {
		t.Fatalf("nbdinfo over TLS --size = %q", out)
	}
	if r := runCmd(t, time.Minute, "nbdinfo", "--size", "nbd+unix:///?socket="+sock); r.Code == 0 {
		t.Fatalf("nbdinfo without TLS was served by a TLS-required server")
	}
}

// mapCovers reports whether an nbdinfo --map listing has one extent of
// type typ covering [off, off+n).
func mapCovers(listing string, off, n int64, typ string) bool {
	for _, l := range strings.Split(listing, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		o, err1 := strconv.ParseInt(f[0], 10, 64)
		k, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 == nil && err2 == nil && f[2] == typ && o <= off && off+n <= o+k {
			return true
		}
	}
	return false
}

// TestNBDBlockDevice serves a loop device: the size comes from
// BLKGETSIZE64, trim and zero go to BLKDISCARD and BLKZEROOUT, and the
// whole device reports as data.
func TestNBDBlockDevice(t *testing.T) {
	img := filepath.Join(t.TempDir(), "loop.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32*mib); err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(mustRun(t, "losetup", "--find", "--show", img))
	t.Cleanup(func() { runCmd(t, time.Minute, "losetup", "--detach", dev) })
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	p := startProc(t, tandemBin, "nbd", "serve", dev, "--socket", sock)
	waitSocket(t, "unix", sock, p)
	uri := "nbd+unix:///?socket=" + sock
	if got := strings.TrimSpace(mustRun(t, "nbdinfo", "--size", uri)); got != strconv.Itoa(32*mib) {
		t.Fatalf("nbdinfo --size of %s = %q, want %d", dev, got, 32*mib)
	}
	out := mustRun(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0x5a 1M 1M", "-c", "read -P 0x5a 1M 1M",
		"-c", "write -z 1M 64k", "-c", "read -P 0 1M 64k",
		"-c", "discard 4M 1M", "-c", "flush", uri)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io on a block device export:\n%s", out)
	}
	if m := mustRun(t, "nbdinfo", "--map", uri); !mapCovers(m, 0, 32*mib, "0") {
		t.Fatalf("nbdinfo --map of a block device: want all data\n%s", m)
	}
}
