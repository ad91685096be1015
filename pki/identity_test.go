package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/pki"
)

func TestInitLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	id, err := pki.Init(dir, "site-a", pki.WithHosts("dr.example.com", "192.0.2.7"))
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	loaded, err := pki.Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := loaded.Site(), "site-a"; got != want {
		t.Errorf("Site() = %q, want %q", got, want)
	}
	if got, want := loaded.CAFingerprint(), id.CAFingerprint(); got != want {
		t.Errorf("CAFingerprint() after Load = %s, want %s", got, want)
	}
	block, _ := pem.Decode(loaded.CAPEM())
	if block == nil {
		t.Fatal("CAPEM() holds no PEM block")
	}
	sum := sha256.Sum256(block.Bytes)
	if got, want := loaded.CAFingerprint(), hex.EncodeToString(sum[:]); got != want {
		t.Errorf("CAFingerprint() = %s, want SHA-256 of the CA DER %s", got, want)
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse CA: %v", err)
	}
	if !ca.IsCA {
		t.Error("CA certificate: IsCA = false, want true")
	}
	if k, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("CA key: got %T, want ECDSA P-256", ca.PublicKey)
	}
	if got := ca.NotAfter.Sub(time.Now()); got < 9*365*24*time.Hour {
		t.Errorf("CA valid for %v more, want about 10 years", got)
	}

	cert := loaded.Certificate()
	if len(cert.Certificate) != 2 {
		t.Fatalf("Certificate() chain has %d certificates, want leaf and CA", len(cert.Certificate))
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatalf("parse leaf: %v", err)
	}
	if got, want := leaf.Subject.CommonName, "site-a"; got != want {
		t.Errorf("leaf common name = %q, want %q", got, want)
	}
	for _, name := range []string{"site-a", "localhost", "dr.example.com"} {
		if !slices.Contains(leaf.DNSNames, name) {
			t.Errorf("leaf DNS names %v lack %q", leaf.DNSNames, name)
		}
	}
	for _, ip := range []string{"127.0.0.1", "::1", "192.0.2.7"} {
		if !slices.ContainsFunc(leaf.IPAddresses, func(x net.IP) bool { return x.Equal(net.ParseIP(ip)) }) {
			t.Errorf("leaf IP addresses %v lack %s", leaf.IPAddresses, ip)
		}
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if !slices.Contains(leaf.ExtKeyUsage, u) {
			t.Errorf("leaf ext key usage %v lacks %v", leaf.ExtKeyUsage, u)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "localhost"}); err != nil {
		t.Errorf("leaf does not verify against the site CA for localhost: %v", err)
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	pems := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".pem") {
			continue
		}
		pems++
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != 0o600 {
			t.Errorf("%s: mode %v, want 0600", e.Name(), got)
		}
	}
	if pems != 4 {
		t.Errorf("identity directory holds %d PEM files, want 4", pems)
	}
}

func TestInitRefusesExistingIdentity(t *testing.T) {
	dir := t.TempDir()
	id, err := pki.Init(dir, "a")
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	_, err = pki.Init(dir, "b")
	wantErr(t, "second Init", err, pki.ErrIdentityExists)
	loaded, err := pki.Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := loaded.CAFingerprint(), id.CAFingerprint(); got != want {
		t.Errorf("CA after refused Init = %s, want the first %s", got, want)
	}
}

func TestInitRejectsBadInput(t *testing.T) {
	for _, site := range []string{"", "-a", ".a", "a b", "a/b", "ä", strings.Repeat("x", 64)} {
		_, err := pki.Init(t.TempDir(), site)
		wantErr(t, "Init("+site+")", err, pki.ErrInvalidSite)
	}
	if _, err := pki.Init(t.TempDir(), "a", pki.WithHosts("bad host")); err == nil {
		t.Error(`Init with host "bad host": got nil error, want one`)
	}
}

func TestLoadWithoutIdentity(t *testing.T) {
	_, err := pki.Load(t.TempDir())
	wantErr(t, "Load of an empty directory", err, pki.ErrNoIdentity)
}

func TestLoadDetectsMismatchedFiles(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if _, err := pki.Init(a, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Init(b, "b"); err != nil {
		t.Fatal(err)
	}
	// a's certificate with b's CA: the leaf does not chain.
	caB, err := os.ReadFile(filepath.Join(b, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, "ca.pem"), caB, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = pki.Load(a)
	wantErr(t, "Load with a foreign CA", err, pki.ErrIdentityCorrupt)
}

// failFS fails WriteFile for one base name, once.
type failFS struct {
	pki.OSFS
	mu   sync.Mutex
	name string
	err  error
}

func (f *failFS) failNext(name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.name, f.err = name, err
}

func (f *failFS) WriteFile(name string, data []byte, perm fs.FileMode) error {
	f.mu.Lock()
	if filepath.Base(name) == f.name && f.err != nil {
		err := f.err
		f.err = nil
		f.mu.Unlock()
		return err
	}
	f.mu.Unlock()
	return f.OSFS.WriteFile(name, data, perm)
}

func TestInitFailureLeavesNoIdentity(t *testing.T) {
	dir := t.TempDir()
	enospc := errors.New("no space left on device")
	fsys := &failFS{}
	fsys.failNext("cert.pem", enospc)
	_, err := pki.Init(dir, "a", pki.WithFS(fsys))
	wantErr(t, "Init with cert.pem failing", err, enospc)
	_, err = pki.Load(dir)
	wantErr(t, "Load after failed Init", err, pki.ErrNoIdentity)
	if _, err := pki.Init(dir, "a", pki.WithFS(fsys)); err != nil {
		t.Fatalf("Init retry after a failed Init: %v", err)
	}
}

func TestIssueClientCertificate(t *testing.T) {
	id := newSite(t, "a", nil)
	certPEM, _, err := id.IssueClientCertificate("host1", 0)
	if err != nil {
		t.Fatalf("IssueClientCertificate: %v", err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cert.Subject.CommonName, "nbd-client:host1"; got != want {
		t.Errorf("common name = %q, want %q", got, want)
	}
	if pki.ValidSite(cert.Subject.CommonName) {
		t.Errorf("client certificate name %q is a valid site name; it must never be", cert.Subject.CommonName)
	}
	roots := x509.NewCertPool()
	roots.AddCert(id.CA())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify against the site CA: %v", err)
	}
}
