package replication_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/replication"
	"github.com/tandem-dr/tandem/replication/replicationtest"
)

// site is a test site's CA and certificate.
type site struct {
	name string
	ca   *x509.Certificate
	cert tls.Certificate
}

func newSite(t *testing.T, name string) site {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return site{name: name, ca: ca, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

func pool(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func TestShipOverMutualTLS(t *testing.T) {
	primary, secondarySite, stranger := newSite(t, "paris"), newSite(t, "lyon"), newSite(t, "mallory")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn := tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{secondarySite.cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool(primary.ca)})
	sink := replicationtest.NewMemSink(diskSize)
	logs := &logBuffer{}
	srv, err := replication.NewServer(replication.ServerConfig{
		Logger: logs.logger(),
		Identify: func(ctx context.Context, c net.Conn) (string, error) {
			tc := c.(*tls.Conn)
			if err := tc.HandshakeContext(ctx); err != nil {
				return "", fmt.Errorf("tls handshake: %w", err)
			}
			return tc.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
		},
		Lookup: func(ctx context.Context, site, disk string) (replication.Sink, error) {
			if site == "paris" && disk == "vm1" {
				return sink, nil
			}
			return nil, replication.ErrUnknownDisk
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), tlsLn)
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })

	dialAs := func(s site) func(context.Context) (net.Conn, error) {
		return func(ctx context.Context) (net.Conn, error) {
			d := tls.Dialer{Config: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{s.cert},
				RootCAs: pool(secondarySite.ca), ServerName: "lyon"}}
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		}
	}
	src := replicationtest.NewMemSource(diskSize, 0)
	stop := make(chan struct{})
	wg := load(src, 2, stop, 20*time.Microsecond)
	s, _ := startSender(t, src, dialAs(primary), nil)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 20*time.Second)

	// A site with a certificate from another CA is refused, nothing applied.
	before, _ := sink.State(context.Background())
	c, err := dialAs(stranger)(context.Background())
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Write(replication.EncodeFrame(replication.FrameHello, replication.EncodeHello("vm1", diskSize, 1, 1), false))
		if err == nil {
			_, _, err = replication.FrameReader(c)()
		}
		c.Close()
	}
	if err == nil {
		t.Fatalf("a connection with a stranger's certificate was answered; want it refused")
	}
	waitLog(t, logs, "peer not identified")
	after, _ := sink.State(context.Background())
	if after.Head != before.Head {
		t.Errorf("sink head moved from %d to %d after a refused connection", before.Head.Seq, after.Head.Seq)
	}
}
