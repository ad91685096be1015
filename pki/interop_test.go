package pki_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The site's certificates must work with the GnuTLS clients and servers
// hosts use for NBD (qemu, libnbd, nbdkit): nbdkit serves with the site
// certificate and requires a client certificate; nbdinfo connects with the
// site CA and a certificate from IssueClientCertificate.
func TestGnuTLSInterop(t *testing.T) {
	for _, tool := range []string{"nbdkit", "nbdinfo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (make deps installs it): %v", tool, err)
		}
	}
	id := newSite(t, "site-a", nil)
	dir := t.TempDir()
	write := func(name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv, cli, noCert := filepath.Join(dir, "srv"), filepath.Join(dir, "cli"), filepath.Join(dir, "nocert")
	for _, d := range []string{srv, cli, noCert} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"ca.pem", "cert.pem", "key.pem"} {
		b, err := os.ReadFile(filepath.Join(id.Dir(), name))
		if err != nil {
			t.Fatal(err)
		}
		write(filepath.Join("srv", map[string]string{"ca.pem": "ca-cert.pem", "cert.pem": "server-cert.pem", "key.pem": "server-key.pem"}[name]), b)
	}
	certPEM, keyPEM, err := id.IssueClientCertificate("host1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write("cli/ca-cert.pem", id.CAPEM())
	write("cli/client-cert.pem", certPEM)
	write("cli/client-key.pem", keyPEM)
	write("nocert/ca-cert.pem", id.CAPEM())
	write("disk.img", make([]byte, 1<<20))

	sock := filepath.Join(dir, "nbd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	server := exec.CommandContext(ctx, "nbdkit", "-f", "--tls=require", "--tls-certificates="+srv, "--tls-verify-peer",
		"-U", sock, "file", filepath.Join(dir, "disk.img"))
	var serverLog strings.Builder
	server.Stderr = &serverLog
	if err := server.Start(); err != nil {
		t.Fatalf("start nbdkit: %v", err)
	}
	t.Cleanup(func() { cancel(); _ = server.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdkit did not create %s: %s", sock, serverLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	info := func(certDir string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "nbdinfo", "--size", "nbds+unix:///?socket="+sock+"&tls-certificates="+certDir).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := info(cli)
	if err != nil || out != "1048576" {
		t.Fatalf("nbdinfo with the site CA and an issued client certificate: %q, %v (nbdkit: %s)", out, err, serverLog.String())
	}
	if out, err := info(noCert); err == nil {
		t.Errorf("nbdinfo without a client certificate against --tls-verify-peer: got %q, want refused", out)
	}
}
