package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const sigterm = syscall.SIGTERM

// TestDiskLifecycle: create, list, info, refuse duplicates and bad sizes, rm.
func TestDiskLifecycle(t *testing.T) {
	s := newSite(t, "alpha")
	s.start()

	s.mustTandem("disk", "create", "vol1", "--size", "64M")
	s.wantFail(1, "exists", "disk", "create", "vol1", "--size", "64M")
	s.wantFail(2, "size", "disk", "create", "vol2", "--size", "12Q")
	s.wantFail(2, "size", "disk", "create", "vol2", "--size", "-5M")
	s.wantFail(2, "size", "disk", "create", "vol2", "--size", "1000")
	s.wantFail(2, "size", "disk", "create", "vol2")
	s.wantFail(1, "disk name", "disk", "create", "bad@name", "--size", "1M")

	var disks []struct {
		Name string `json:"name"`
		Size int64  `json:"size"`
		Role string `json:"role"`
	}
	if err := json.Unmarshal([]byte(s.mustTandem("disk", "list", "--json")), &disks); err != nil {
		t.Fatal(err)
	}
	if len(disks) != 1 || disks[0].Name != "vol1" || disks[0].Size != 64<<20 || disks[0].Role != "primary" {
		t.Fatalf("disk list = %+v, want vol1 64 MiB primary", disks)
	}
	info := s.mustTandem("disk", "info", "vol1")
	if !strings.Contains(info, "64M") {
		t.Fatalf("disk info:\n%s\nwant the size 64M", info)
	}
	// --data after the command name works as well as before it.
	r := runCmd(t, time.Minute, tandemBin, "disk", "list", "--data", s.data)
	if r.Code != 0 || !strings.Contains(r.Stdout, "vol1") {
		t.Fatalf("disk list --data after the command: %+v", r)
	}
	// TANDEM_DATA works too.
	t.Setenv("TANDEM_DATA", s.data)
	r = runCmd(t, time.Minute, tandemBin, "status")
	if r.Code != 0 || !strings.Contains(r.Stdout, "vol1") {
		t.Fatalf("status with TANDEM_DATA: %+v", r)
	}

	img := filepath.Join(s.data, "disks", "vol1.img")
	if !fileExists(img) {
		t.Fatalf("backing file %s missing", img)
	}
	s.mustTandem("disk", "rm", "vol1")
	if fileExists(img) {
		t.Fatalf("backing file %s left after rm", img)
	}
	s.wantFail(1, "no such disk", "disk", "info", "vol1")
	s.wantFail(1, "no such disk", "disk", "rm", "vol1")
	s.stop()
}

// TestCLIWithoutDaemon: commands that need the daemon say so clearly.
func TestCLIWithoutDaemon(t *testing.T) {
	s := newSite(t, "alpha")
	s.wantFail(1, "tandem serve", "disk", "list")
	s.wantFail(1, "already", "init", "--site", "alpha")
	s.wantFail(2, "", "disk", "frobnicate")
}

// TestSecondDaemonRefused: one data directory, one daemon.
func TestSecondDaemonRefused(t *testing.T) {
	s := newSite(t, "alpha")
	s.start()
	r := runCmd(t, 30*time.Second, tandemBin, "--data", s.data, "serve", "--nbd", "unix:"+s.nbd+"2",
		"--api", "unix:"+filepath.Join(t.TempDir(), "api2.sock"), "--repl", "tcp:127.0.0.1:0")
	if r.Code != 1 || !strings.Contains(r.Stderr, "another tandem daemon") {
		t.Fatalf("second daemon: exit %d stderr %q, want exit 1 and 'another tandem daemon'", r.Code, r.Stderr)
	}
	s.mustTandem("status")
}

// TestAPIMalformedBody: garbage to the API gets 400 and changes nothing.
func TestAPIMalformedBody(t *testing.T) {
	s := newSite(t, "alpha")
	s.start()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(s.data, "api.sock"))
	}}}
	for _, body := range []string{"{", "not json", `{"name": 5}`, `{"name":"x","size":1024,"extra":1}`, `{"name":"x","size":-1}`, strings.Repeat("[", 1<<16)} {
		resp, err := hc.Post("http://tandem/v1/disks", "application/json", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatalf("post %q: %v", body, err)
		}
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || e.Error == "" {
			t.Fatalf("post %.20q: status %d error %q, want 400 with a message", body, resp.StatusCode, e.Error)
		}
	}
	if out := s.mustTandem("disk", "list", "--json"); strings.Contains(out, `"x"`) {
		t.Fatalf("a malformed request created a disk: %s", out)
	}
}

// TestNBDThroughJournal: a real client writes a file through NBD; the disk
// equals it, the journal holds the writes, and both survive a restart.
func TestNBDThroughJournal(t *testing.T) {
	s := newSite(t, "alpha")
	s.start()
	s.mustTandem("disk", "create", "vol1", "--size", "32M")

	src := filepath.Join(t.TempDir(), "src.img")
	mustRun(t, "sh", "-c", "head -c 8M /dev/urandom > "+src+" && truncate -s 32M "+src)
	mustRun(t, "nbdcopy", src, s.uri("vol1"))
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.uri("vol1"))

	var di struct {
		JournalHead uint64 `json:"journal_head"`
	}
	json.Unmarshal([]byte(s.mustTandem("disk", "info", "vol1", "--json")), &di)
	if di.JournalHead == 0 {
		t.Fatalf("journal head is 0 after 8 MiB of writes")
	}
	// The same figures as Prometheus metrics on the API socket.
	metrics := mustRun(t, "curl", "-sf", "--unix-socket", filepath.Join(s.data, "api.sock"), "http://tandem/metrics")
	for _, want := range []string{`tandem_journal_head{disk="vol1",role="primary"}`, `tandem_disk_written_bytes_total{disk="vol1",role="primary"}`, "go_goroutines"} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %q:\n%s", want, metrics)
		}
	}
	if strings.Contains(metrics, `tandem_disk_written_bytes_total{disk="vol1",role="primary"} 0`+"\n") {
		t.Fatalf("metrics count no bytes written after 8 MiB of writes")
	}
	s.stop()
	s.start()
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.uri("vol1"))
	var di2 struct {
		JournalHead uint64 `json:"journal_head"`
	}
	json.Unmarshal([]byte(s.mustTandem("disk", "info", "vol1", "--json")), &di2)
	if di2.JournalHead != di.JournalHead {
		t.Fatalf("journal head %d after restart, was %d", di2.JournalHead, di.JournalHead)
	}
	// A disk created from an existing file protects it in place.
	from := filepath.Join(t.TempDir(), "existing.img")
	mustRun(t, "cp", src, from)
	s.mustTandem("disk", "create", "vol2", "--from", from)
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.uri("vol2"))
	s.stop()
	if _, err := os.Stat(from); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonNBDTLS: a listener can require STARTTLS with the site's
// certificate: a plaintext client is refused, one that trusts the site CA
// is served.
func TestDaemonNBDTLS(t *testing.T) {
	port := freePort(t)
	s := newSite(t, "alpha", "--nbd", fmt.Sprintf("tcp:127.0.0.1:%d?tls=required", port))
	s.start()
	s.mustTandem("disk", "create", "vol1", "--size", "16M")
	plain := runCmd(t, time.Minute, "nbdinfo", "--size", fmt.Sprintf("nbd://127.0.0.1:%d/vol1", port))
	if plain.Code == 0 {
		t.Fatalf("plaintext client served on a TLS-required listener: %s", plain.Stdout)
	}
	certs := t.TempDir()
	mustRun(t, "cp", filepath.Join(s.data, "pki", "ca.pem"), filepath.Join(certs, "ca-cert.pem"))
	out := mustRun(t, "nbdinfo", "--size", fmt.Sprintf("nbds://127.0.0.1:%d/vol1?tls-certificates=%s", port, certs))
	if strings.TrimSpace(out) != "16777216" {
		t.Fatalf("size over TLS: %q", out)
	}
	// The unix listener next to it stays plaintext.
	mustRun(t, "nbdinfo", "--size", s.uri("vol1"))
}
