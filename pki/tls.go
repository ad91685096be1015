package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ALPN protocol names on the replication listener. A pairing connection is
// the only kind the listener accepts without a client certificate; any
// other protocol requires one from a paired site.
const (
	// ALPNReplication names the replication protocol, version 1.
	ALPNReplication = "tandem-repl/1"
	// ALPNPairing names the pairing exchange, version 1.
	ALPNPairing = "tandem-pair/1"
)

// Sentinel errors of the TLS configurations.
var (
	// ErrUntrustedPeer is returned by a handshake whose peer's certificate
	// does not chain to the CA pinned for the site it names.
	ErrUntrustedPeer = errors.New("pki: peer certificate not from a paired site")
	// ErrNoPeerCertificate is returned by a handshake whose peer presented
	// no certificate where one is required.
	ErrNoPeerCertificate = errors.New("pki: peer presented no certificate (only pairing connections may)")
	// ErrPairingConnection is returned by PeerSite for a pairing
	// connection, whose peer is not authenticated by certificate.
	ErrPairingConnection = errors.New("pki: pairing connection has no authenticated peer site")
)

// ServerTLS is the configuration of the replication listener: TLS 1.3
// only, this site's certificate, ALPN ALPNReplication or ALPNPairing.
// Every connection except a pairing one must present a client certificate
// that chains to the CA pinned in peers for the site its common name names
// (never to system roots); PeerSite then returns that site. A pairing
// connection is accepted without a certificate, and PairServer
// authenticates it by token. Peers paired or removed later are honoured by
// the same configuration; session tickets are off, so every connection is
// verified in full. A nil peers means id.Peers().
//
// A refused handshake returns an error wrapping ErrNoPeerCertificate or
// ErrUntrustedPeer that says why, fit for a log line.
func (id *Identity) ServerTLS(peers *Peers) *tls.Config {
	if peers == nil {
		peers = id.peers
	}
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{id.cert},
		ClientAuth:             tls.RequestClientCert,
		NextProtos:             []string{ALPNReplication, ALPNPairing},
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol == ALPNPairing {
				return nil
			}
			_, err := verifyPeer(peers, cs.PeerCertificates, x509.ExtKeyUsageClientAuth, id.now())
			if err != nil {
				return fmt.Errorf("verify client (protocol %q): %w", cs.NegotiatedProtocol, err)
			}
			return nil
		},
	}
}

// ClientTLS is the configuration for dialling the paired site peerSite's
// replication listener: TLS 1.3 only, this site's certificate, ALPN
// ALPNReplication, and a server certificate accepted only when it chains
// to peerSite's pinned CA and names peerSite (the address dialled does not
// matter, so a proxy or NAT may sit in the path). When peerSite is not
// paired, the handshake fails with ErrUntrustedPeer.
func (id *Identity) ClientTLS(peerSite string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		NextProtos:   []string{ALPNReplication},
		ServerName:   peerSite,
		// Verification is VerifyConnection's: the pinned CA of peerSite
		// only, and the site name instead of the host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			site, err := verifyPeer(id.peers, cs.PeerCertificates, x509.ExtKeyUsageServerAuth, id.now())
			if err != nil {
				return fmt.Errorf("verify server of site %q: %w", peerSite, err)
			}
			if site != peerSite {
				return fmt.Errorf("verify server: %w: dialled site %q but the server is site %q", ErrUntrustedPeer, peerSite, site)
			}
			return nil
		},
	}
}

// PeerSite returns the site at the other end of a connection whose
// handshake used ServerTLS or ClientTLS: those checked that the peer's
// certificate chains to the CA pinned for the site it names. For a pairing
// connection it returns ErrPairingConnection.
func PeerSite(state tls.ConnectionState) (string, error) {
	if !state.HandshakeComplete {
		return "", errors.New("pki: peer site: handshake not complete")
	}
	if state.NegotiatedProtocol == ALPNPairing {
		return "", ErrPairingConnection
	}
	if len(state.PeerCertificates) == 0 {
		return "", ErrNoPeerCertificate
	}
	site := state.PeerCertificates[0].Subject.CommonName
	if !ValidSite(site) {
		return "", fmt.Errorf("%w: common name %q is not a site name", ErrUntrustedPeer, site)
	}
	return site, nil
}

// NBDServerTLS is the configuration for NBD STARTTLS: this site's
// certificate (its SANs cover localhost, 127.0.0.1, ::1, the site name and
// the hosts given at Init), TLS 1.3 only. Clients verify the appliance
// with CAPEM (qemu's tls-creds-x509 ca-cert.pem). A client certificate is
// optional; when one is given it must chain to this site's CA (the site's
// own certificate, or one from IssueClientCertificate).
func (id *Identity) NBDServerTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(id.ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
	}
}

// NBDClientTLS is the configuration for an NBD client of this site's own
// NBD server (tandem attach, tests): TLS 1.3, the server verified against
// this site's CA under serverName (as "localhost"), and this site's
// certificate as the client's.
func (id *Identity) NBDClientTLS(serverName string) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(id.ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}
}

// verifyPeer checks that certs[0] chains to the CA pinned in peers for the
// site its common name names, for usage at now, and returns that site.
func verifyPeer(peers *Peers, certs []*x509.Certificate, usage x509.ExtKeyUsage, now time.Time) (string, error) {
	if len(certs) == 0 {
		return "", ErrNoPeerCertificate
	}
	leaf := certs[0]
	site := leaf.Subject.CommonName
	if !ValidSite(site) {
		return "", fmt.Errorf("%w: common name %q is not a site name", ErrUntrustedPeer, site)
	}
	ca, ok := peers.ca(site)
	if !ok {
		issuer := leaf.Issuer.CommonName
		if len(certs) > 1 {
			issuer += " " + Fingerprint(certs[1])
		}
		return "", fmt.Errorf("%w: site %q is not paired (certificate issued by %s)", ErrUntrustedPeer, site, issuer)
	}
	if err := verifyLeaf(leaf, ca, usage, now); err != nil {
		return "", fmt.Errorf("%w: certificate of site %q does not chain to its pinned CA %.16s…: %v", ErrUntrustedPeer, site, Fingerprint(ca), err)
	}
	return site, nil
}
