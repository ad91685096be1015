package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/pki"
)

func TestMutualTLSAfterPairing(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	lp, ls := listen(t, primary), listen(t, secondary)
	pairSites(t, primary, secondary, ls)

	// Each way: the primary ships to the secondary, and after a failover
	// the secondary ships back.
	for _, c := range []struct {
		from, to *pki.Identity
		l        *listener
	}{{primary, secondary, ls}, {secondary, primary, lp}} {
		msg, cs, err := dialRepl(c.l.addr, c.from.ClientTLS(c.to.Site()))
		if err != nil {
			t.Fatalf("%s → %s: %v", c.from.Site(), c.to.Site(), err)
		}
		if want := "hello " + c.from.Site() + "\n"; msg != want {
			t.Errorf("%s → %s: greeting %q, want %q", c.from.Site(), c.to.Site(), msg, want)
		}
		if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != pki.ALPNReplication {
			t.Errorf("%s → %s: version %x protocol %q, want TLS 1.3 and %q", c.from.Site(), c.to.Site(), cs.Version, cs.NegotiatedProtocol, pki.ALPNReplication)
		}
		if site, err := pki.PeerSite(cs); err != nil || site != c.to.Site() {
			t.Errorf("%s → %s: client PeerSite = %q, %v, want %q", c.from.Site(), c.to.Site(), site, err, c.to.Site())
		}
		if ev := c.l.next(t); ev.err != nil || ev.site != c.from.Site() {
			t.Errorf("%s → %s: server saw {site %q, err %v}, want {%q, nil}", c.from.Site(), c.to.Site(), ev.site, ev.err, c.from.Site())
		}
	}
}

// rogueConfig presents id's certificate on the replication protocol and
// trusts any server, as an attacker would.
func rogueConfig(id *pki.Identity) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{pki.ALPNReplication}, InsecureSkipVerify: true}
	if id != nil {
		cfg.Certificates = []tls.Certificate{id.Certificate()}
	}
	return cfg
}

func TestServerRefusesUntrustedClients(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	ls := listen(t, secondary)
	pairSites(t, primary, secondary, ls)
	impostor := newSite(t, "primary", nil) // the paired name, another CA
	stranger := newSite(t, "stranger", nil)
	noALPN := rogueConfig(primary)
	noALPN.NextProtos = nil

	cases := []struct {
		name string
		cfg  *tls.Config
		want error
	}{
		{"unpaired CA", rogueConfig(stranger), pki.ErrUntrustedPeer},
		{"paired name, other CA", rogueConfig(impostor), pki.ErrUntrustedPeer},
		{"no certificate", rogueConfig(nil), pki.ErrNoPeerCertificate},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg, _, err := dialRepl(ls.addr, tc.cfg)
			if err == nil {
				t.Fatalf("client got greeting %q, want the connection refused", msg)
			}
			ev := ls.next(t)
			wantErr(t, "server handshake", ev.err, tc.want)
			t.Logf("server: %v", ev.err)
		})
	}
	t.Run("no ALPN with the paired certificate", func(t *testing.T) {
		// The real certificate but no protocol named: still needs the
		// certificate check, and passes it.
		msg, _, err := dialRepl(ls.addr, noALPN)
		if err != nil || msg != "hello primary\n" {
			t.Fatalf("got %q, %v, want the greeting", msg, err)
		}
		ls.next(t)
	})
	t.Run("no ALPN, no certificate", func(t *testing.T) {
		cfg := rogueConfig(nil)
		cfg.NextProtos = nil
		if _, _, err := dialRepl(ls.addr, cfg); err == nil {
			t.Fatal("client without certificate or ALPN was served")
		}
		wantErr(t, "server handshake", ls.next(t).err, pki.ErrNoPeerCertificate)
	})
	t.Run("TLS 1.2", func(t *testing.T) {
		cfg := primary.ClientTLS("secondary")
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		if _, _, err := dialRepl(ls.addr, cfg); err == nil {
			t.Fatal("a TLS 1.2 client was served")
		}
		if ev := ls.next(t); ev.err == nil {
			t.Error("server accepted a TLS 1.2 handshake")
		}
	})
}

func TestRemovedPeerRefused(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	ls := listen(t, secondary)
	pairSites(t, primary, secondary, ls)
	if _, _, err := dialRepl(ls.addr, primary.ClientTLS("secondary")); err != nil {
		t.Fatalf("before pair rm: %v", err)
	}
	ls.next(t)
	if err := secondary.Peers().Remove("primary"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := dialRepl(ls.addr, primary.ClientTLS("secondary")); err == nil {
		t.Fatal("after pair rm: connection served, want refused")
	}
	wantErr(t, "server after pair rm", ls.next(t).err, pki.ErrUntrustedPeer)
}

func TestClientRefusesWrongServer(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	third := newSite(t, "third", nil)
	ls, l3 := listen(t, secondary), listen(t, third)
	pairSites(t, primary, secondary, ls)
	pairSites(t, primary, third, l3)

	// Dialling "third" but reaching the secondary (a wrong address).
	_, _, err := dialRepl(ls.addr, primary.ClientTLS("third"))
	wantErr(t, "dial third at the secondary's address", err, pki.ErrUntrustedPeer)
	t.Logf("client: %v", err)
	ls.next(t)
	// A site never paired.
	_, _, err = dialRepl(ls.addr, primary.ClientTLS("nobody"))
	wantErr(t, "dial an unpaired site", err, pki.ErrUntrustedPeer)
	ls.next(t)
	// An impostor with its own CA named like the secondary.
	impostor := newSite(t, "secondary", nil)
	li := listen(t, impostor)
	_, _, err = dialRepl(li.addr, primary.ClientTLS("secondary"))
	wantErr(t, "dial an impostor", err, pki.ErrUntrustedPeer)
	li.next(t)
}

func TestPeerSite(t *testing.T) {
	_, err := pki.PeerSite(tls.ConnectionState{HandshakeComplete: true, NegotiatedProtocol: pki.ALPNPairing})
	wantErr(t, "PeerSite of a pairing connection", err, pki.ErrPairingConnection)
	_, err = pki.PeerSite(tls.ConnectionState{HandshakeComplete: true, NegotiatedProtocol: pki.ALPNReplication})
	wantErr(t, "PeerSite without certificates", err, pki.ErrNoPeerCertificate)
	if _, err := pki.PeerSite(tls.ConnectionState{}); err == nil {
		t.Error("PeerSite before the handshake: got nil error")
	}
	id := newSite(t, "a", nil)
	site, err := pki.PeerSite(tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{id.Certificate().Leaf}})
	if err != nil || site != "a" {
		t.Errorf("PeerSite = %q, %v, want a", site, err)
	}
}

func TestNBDServerTLS(t *testing.T) {
	id := newSite(t, "a", nil)
	other := newSite(t, "b", nil)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", id.NBDServerTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				_, _ = c.Write([]byte("ok"))
			}()
		}
	}()
	issuedCert, issuedKey, err := id.IssueClientCertificate("host1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := tls.X509KeyPair(issuedCert, issuedKey)
	if err != nil {
		t.Fatal(err)
	}
	withCert := func(name string, certs ...tls.Certificate) *tls.Config {
		cfg := id.NBDClientTLS(name)
		cfg.Certificates = certs
		return cfg
	}
	cases := []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{"site certificate", id.NBDClientTLS("localhost"), true},
		{"no client certificate", withCert("127.0.0.1"), true},
		{"issued client certificate", withCert("localhost", issued), true},
		{"certificate of another CA", forceCert(withCert("localhost"), other.Certificate()), false},
		{"server name not in the certificate", withCert("example.com"), false},
		{"client trusting another CA", other.NBDClientTLS("localhost"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := nbdDial(ln.Addr().String(), tc.cfg)
			if (err == nil) != tc.ok {
				t.Errorf("got error %v, want success %v", err, tc.ok)
			}
		})
	}
}

// forceCert makes cfg present cert even when the server's list of
// acceptable CAs does not name its issuer (Go's client would otherwise
// send none).
func forceCert(cfg *tls.Config, cert tls.Certificate) *tls.Config {
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	return cfg
}

func nbdDial(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil {
		return err
	}
	if string(buf) != "ok" {
		return errors.New("bad greeting")
	}
	return nil
}
