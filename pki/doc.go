// Package pki owns a site's identity and trust: its CA and certificate,
// the sites it is paired with (each pinned to its own CA), the one-time
// pairing tokens it issues, the pairing exchange, and the TLS
// configurations every connection between sites (and NBD STARTTLS) uses.
//
// Layout of an identity directory (DATA/pki), every file mode 0600:
//
//	ca.pem, ca-key.pem   the site CA (ECDSA P-256, 10 years)
//	cert.pem, key.pem    the site certificate, signed by the CA; written last
//	peers/SITE.pem       a paired site's CA certificate, pinned
//	peers/SITE.addr      the address of its replication listener
//	tokens/ID.json       an issued pairing token: the HMAC key derived from
//	                     its secret (never the secret), address, expiry, use
//
// Trust: a peer's certificate is accepted only when it chains to the CA
// pinned for the site its common name names; system roots are never used,
// and host names are not checked (sites are named by certificate, so a
// proxy or NAT may sit in the path). Pairing is the only way a CA becomes
// pinned: the secondary issues a token (address, CA fingerprint, 32-byte
// secret, expiry), the primary runs PairClient against the token's address,
// the secondary runs PairServer; see pair.go for the exchange.
//
// On the replication listener, ALPN tells connections apart:
// ALPNPairing connections may come without a client certificate (and go to
// PairServer); every other one needs a certificate from a paired site
// (PeerSite names it).
//
// How the daemon uses it:
//
//	id, err := pki.Load(filepath.Join(data, "pki"))           // pki.Init at tandem init
//	ln, err := pki.NewListener(tcpLn, pki.ListenerConfig{Identity: id, Logger: log})
//	// ln serves pairing itself and Accept returns only handshaken
//	// *pki.Conn from paired sites: hand it to replication.Server.Serve,
//	// with Identify = pki.PeerSite(conn.(*pki.Conn).ConnectionState()).
//	tok, err := id.NewToken("dr-b.example:7800", 0)            // tandem pair token
//	t, err := pki.ParseToken(arg); c, err := net.Dial("tcp", t.Address)
//	peer, err := pki.PairClient(ctx, c, id, t)                 // tandem pair add
//	conn, err := id.DialPeer(ctx, peer.Site, "")               // replication dial
//
// Without Listener, the same by hand: tls.Server(c, id.ServerTLS(id.Peers())),
// HandshakeContext (a refusal is a log line), then PairServer when the
// negotiated protocol is ALPNPairing, else PeerSite.
//
// pki knows nothing of journals, disks, NBD framing or the replication
// protocol; it does no logging and returns errors that say what was
// refused and why, for the daemon to log.
//
// Concurrency: an Identity is immutable after Load and safe for concurrent
// use; its Peers and Tokens guard their state with mutexes, and a token is
// consumed at most once however many pairing attempts race. TLS
// configurations read the current peers at each handshake. Every file goes
// through the FS seam (OSFS by default), written atomically and synced.
package pki
