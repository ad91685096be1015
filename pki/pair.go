package pki

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// The pairing exchange, version 1, runs over TLS 1.3 with ALPN
// ALPNPairing. Each message is a 4-byte big-endian length and that many
// bytes of JSON (at most maxPairMessage):
//
//	secondary → primary  hello   {"v":1,"site":S,"nonce":N}        N: 32 random bytes
//	primary → secondary  request {"v":1,"token_id":I,"site":P,"ca_pem":C,"address":A,"proof":H}
//	secondary → primary  result  {"v":1,"ok":true} or {"v":1,"error":E}
//
// The primary accepts the TLS handshake only when the server's chain holds
// the CA whose fingerprint the token carries and the leaf chains to it. The
// primary presents its own certificate, which must chain to C and name P.
// H = HMAC-SHA256(K, "tandem-pair/1" ‖ I ‖ fp(S's CA) ‖ fp(C) ‖ N ‖ X ‖ S ‖ P)
// where K = SHA-256("tandem-pair-key/1\0" ‖ secret) is what the secondary
// keeps of the token, fp is SHA-256 of a CA's DER, X is 32 bytes of the TLS
// exporter "EXPORTER-tandem-pair/1" (binding the proof to this connection)
// and the names are length-prefixed. The secret itself never travels.
const (
	pairVersion      = 1
	maxPairMessage   = 64 << 10
	nonceSize        = 32
	exporterLabel    = "EXPORTER-tandem-pair/1"
	exporterSize     = 32
	proofDomain      = "tandem-pair/1"
	tokenIDLen       = 2 * tokenIDSize
	maxCAPEMLen      = 16 << 10
	errorMessageSize = 1024
)

// DefaultPairTimeout bounds a pairing exchange whose context has no
// deadline.
const DefaultPairTimeout = 30 * time.Second

// Sentinel errors of the pairing exchange.
var (
	// ErrFingerprintMismatch is returned by PairClient when the server's
	// CA is not the one the token names (a wrong address, or a man in the
	// middle).
	ErrFingerprintMismatch = errors.New("pki: server's CA does not match the token's fingerprint")
	// ErrProofMismatch is returned by PairServer when the client's proof
	// does not match the token (it does not hold the token's secret).
	ErrProofMismatch = errors.New("pki: pairing proof does not match the token (wrong secret)")
	// ErrPairRefused is returned by PairClient when the secondary refused
	// the pairing; the error says the secondary's reason.
	ErrPairRefused = errors.New("pki: pairing refused by the peer")
	// ErrPairProtocol is returned for a message that breaks the pairing
	// exchange.
	ErrPairProtocol = errors.New("pki: pairing protocol violation")
)

type pairHello struct {
	V     int    `json:"v"`
	Site  string `json:"site"`
	Nonce []byte `json:"nonce"`
}

type pairRequest struct {
	V       int    `json:"v"`
	TokenID string `json:"token_id"`
	Site    string `json:"site"`
	CAPEM   string `json:"ca_pem"`
	Address string `json:"address,omitempty"`
	Proof   []byte `json:"proof"`
}

type pairResult struct {
	V     int    `json:"v"`
	OK    bool   `json:"ok,omitempty"`
	Error string `json:"error,omitempty"`
}

// PairOption changes what PairClient tells the secondary.
type PairOption func(*pairOptions)

type pairOptions struct{ address string }

// WithAdvertiseAddress gives the secondary the host:port of this site's
// replication listener, kept as the primary's address in the secondary's
// Peers (for reverse replication after a failover).
func WithAdvertiseAddress(address string) PairOption {
	return func(o *pairOptions) { o.address = address }
}

// PairClient runs the primary's side of pairing on conn, a fresh
// connection to tok.Address (PairClient does the TLS handshake; the caller
// closes conn). It accepts only a server whose chain holds the CA of the
// token's fingerprint, proves it holds the token's secret without sending
// it, and sends this site's CA and name. When the secondary accepts, the
// secondary's site is added to id.Peers() with its CA and tok.Address, and
// PairClient returns it. ctx bounds the whole exchange (DefaultPairTimeout
// when it has no deadline).
func PairClient(ctx context.Context, conn net.Conn, id *Identity, tok Token, opts ...PairOption) (peer PeerInfo, err error) {
	var o pairOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.address != "" {
		if err := validAddress(o.address); err != nil {
			return PeerInfo{}, fmt.Errorf("pair: advertised address %q: %v", o.address, err)
		}
	}
	wantFP, err := hex.DecodeString(tok.CAFingerprint)
	if err != nil || len(wantFP) != sha256.Size {
		return PeerInfo{}, fmt.Errorf("pair: %w: bad CA fingerprint", ErrTokenMalformed)
	}
	var serverCA *x509.Certificate
	var serverSite string
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		NextProtos:   []string{ALPNPairing},
		// Verification is VerifyConnection's: the CA the token names.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			ca, site, err := verifyPinnedServer(cs.PeerCertificates, wantFP, id.now())
			if err != nil {
				return err
			}
			serverCA, serverSite = ca, site
			return nil
		},
	}
	tc := tls.Client(conn, cfg)
	stop := watchContext(ctx, conn)
	defer stop()
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
	}()
	if err := tc.HandshakeContext(ctx); err != nil {
		return PeerInfo{}, fmt.Errorf("pair with %s: TLS handshake: %w", tok.Address, err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != ALPNPairing {
		return PeerInfo{}, fmt.Errorf("pair with %s: %w: server does not speak %s", tok.Address, ErrPairProtocol, ALPNPairing)
	}
	var hello pairHello
	if err := readPairMessage(tc, &hello); err != nil {
		return PeerInfo{}, fmt.Errorf("pair with %s: read hello: %w", tok.Address, err)
	}
	switch {
	case hello.V != pairVersion:
		return PeerInfo{}, fmt.Errorf("pair with %s: %w: version %d, want %d", tok.Address, ErrPairProtocol, hello.V, pairVersion)
	case hello.Site != serverSite:
		return PeerInfo{}, fmt.Errorf("pair with %s: %w: hello names site %q but the certificate %q", tok.Address, ErrPairProtocol, hello.Site, serverSite)
	case len(hello.Nonce) != nonceSize:
		return PeerInfo{}, fmt.Errorf("pair with %s: %w: nonce of %d bytes", tok.Address, ErrPairProtocol, len(hello.Nonce))
	case serverSite == id.site:
		return PeerInfo{}, fmt.Errorf("pair with %s: the peer has this site's own name %q: sites must have different names", tok.Address, serverSite)
	}
	exporter, err := cs.ExportKeyingMaterial(exporterLabel, nil, exporterSize)
	if err != nil {
		return PeerInfo{}, fmt.Errorf("pair with %s: export keying material: %w", tok.Address, err)
	}
	key := tokenKey(tok.Secret)
	req := pairRequest{
		V:       pairVersion,
		TokenID: tok.ID,
		Site:    id.site,
		CAPEM:   string(id.caPEM),
		Address: o.address,
		Proof:   pairProof(key[:], tok.ID, wantFP, id.caFP[:], hello.Nonce, exporter, serverSite, id.site),
	}
	if err := writePairMessage(tc, req); err != nil {
		return PeerInfo{}, fmt.Errorf("pair with %s: send request: %w", tok.Address, err)
	}
	var res pairResult
	if err := readPairMessage(tc, &res); err != nil {
		return PeerInfo{}, fmt.Errorf("pair with %s: read result: %w", tok.Address, err)
	}
	if !res.OK {
		return PeerInfo{}, fmt.Errorf("pair with %s: %w: %s", tok.Address, ErrPairRefused, res.Error)
	}
	caPEM := certPEM(serverCA.Raw)
	if err := id.peers.Add(serverSite, caPEM, tok.Address); err != nil {
		return PeerInfo{}, fmt.Errorf("pair with %s: %w", tok.Address, err)
	}
	return PeerInfo{Site: serverSite, Address: tok.Address, CAFingerprint: Fingerprint(serverCA), CAPEM: caPEM}, nil
}

// PairServer runs the secondary's side of pairing on conn, a connection
// accepted with id.ServerTLS whose ALPN is ALPNPairing (PairServer
// completes the handshake if needed; the caller closes conn). It checks
// that the client's proof matches a token this site issued and that has
// neither expired nor been used, that the client's certificate chains to
// the CA it sends and names its site; then it adds the client's site to
// id.Peers(), marks the token used (durably) and returns the new peer. A
// refusal is told to the client and returned as an error that says why
// (ErrTokenUnknown, ErrTokenUsed, ErrTokenExpired, ErrProofMismatch,
// ErrPairProtocol, …), fit for a log line. ctx bounds the exchange
// (DefaultPairTimeout when it has no deadline).
func PairServer(ctx context.Context, conn *tls.Conn, id *Identity, tokens *Tokens) (peer PeerInfo, err error) {
	if tokens == nil {
		tokens = id.tokens
	}
	stop := watchContext(ctx, conn)
	defer stop()
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
	}()
	remote := conn.RemoteAddr().String()
	if err := conn.HandshakeContext(ctx); err != nil {
		return PeerInfo{}, fmt.Errorf("pairing from %s: TLS handshake: %w", remote, err)
	}
	cs := conn.ConnectionState()
	if cs.NegotiatedProtocol != ALPNPairing {
		return PeerInfo{}, fmt.Errorf("pairing from %s: %w: protocol %q is not %s", remote, ErrPairProtocol, cs.NegotiatedProtocol, ALPNPairing)
	}
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return PeerInfo{}, fmt.Errorf("pairing from %s: %w", remote, err)
	}
	if err := writePairMessage(conn, pairHello{V: pairVersion, Site: id.site, Nonce: nonce}); err != nil {
		return PeerInfo{}, fmt.Errorf("pairing from %s: send hello: %w", remote, err)
	}
	req, err := readPairRequest(conn)
	if err != nil {
		refuse(conn, fmt.Errorf("read request: %w", err))
		return PeerInfo{}, fmt.Errorf("pairing from %s: read request: %w", remote, err)
	}
	peer, err = acceptPairing(id, tokens, cs, req, nonce)
	if err != nil {
		refuse(conn, err)
		return PeerInfo{}, fmt.Errorf("pairing from %s (site %q): %w", remote, req.Site, err)
	}
	if err := writePairMessage(conn, pairResult{V: pairVersion, OK: true}); err != nil {
		return peer, fmt.Errorf("pairing from %s: paired site %q but could not tell it: %w", remote, req.Site, err)
	}
	return peer, nil
}

// acceptPairing checks a pairing request and, when it holds, adds the
// client's site to the peers and consumes the token.
func acceptPairing(id *Identity, tokens *Tokens, cs tls.ConnectionState, req pairRequest, nonce []byte) (PeerInfo, error) {
	if req.Site == id.site {
		return PeerInfo{}, fmt.Errorf("the primary has this site's own name %q: sites must have different names", req.Site)
	}
	clientCA, err := parsePeerCA([]byte(req.CAPEM))
	if err != nil {
		return PeerInfo{}, err
	}
	if len(cs.PeerCertificates) == 0 {
		return PeerInfo{}, fmt.Errorf("%w: the pairing client presented no certificate", ErrPairProtocol)
	}
	leaf := cs.PeerCertificates[0]
	if err := verifyLeaf(leaf, clientCA, x509.ExtKeyUsageClientAuth, id.now()); err != nil {
		return PeerInfo{}, fmt.Errorf("%w: the client's certificate does not chain to the CA it sent: %v", ErrPairProtocol, err)
	}
	if leaf.Subject.CommonName != req.Site {
		return PeerInfo{}, fmt.Errorf("%w: the request names site %q but the certificate %q", ErrPairProtocol, req.Site, leaf.Subject.CommonName)
	}
	exporter, err := cs.ExportKeyingMaterial(exporterLabel, nil, exporterSize)
	if err != nil {
		return PeerInfo{}, fmt.Errorf("export keying material: %w", err)
	}
	clientFP := sha256.Sum256(clientCA.Raw)
	caPEM := certPEM(clientCA.Raw)
	info := PeerInfo{Site: req.Site, Address: req.Address, CAFingerprint: Fingerprint(clientCA), CAPEM: caPEM}
	added := false
	err = tokens.consume(req.TokenID, req.Site, func(key []byte) error {
		want := pairProof(key, req.TokenID, id.caFP[:], clientFP[:], nonce, exporter, id.site, req.Site)
		if !hmac.Equal(want, req.Proof) {
			return fmt.Errorf("token %s: %w", req.TokenID, ErrProofMismatch)
		}
		if err := id.peers.Add(req.Site, caPEM, req.Address); err != nil {
			return err
		}
		added = true
		return nil
	})
	if err != nil {
		if added {
			// The token could not be marked used: undo the pairing so
			// that a retry with the same token starts from scratch.
			_ = id.peers.Remove(req.Site)
		}
		return PeerInfo{}, err
	}
	return info, nil
}

// refuse tells the client why pairing failed, best effort.
func refuse(conn net.Conn, reason error) {
	msg := reason.Error()
	if len(msg) > errorMessageSize {
		msg = msg[:errorMessageSize]
	}
	_ = writePairMessage(conn, pairResult{V: pairVersion, Error: msg})
}

// verifyPinnedServer checks a pairing server's chain: one of its
// certificates is a CA with fingerprint fp, and the leaf chains to it for
// server authentication. It returns that CA and the leaf's site.
func verifyPinnedServer(certs []*x509.Certificate, fp []byte, now time.Time) (*x509.Certificate, string, error) {
	if len(certs) == 0 {
		return nil, "", ErrNoPeerCertificate
	}
	var ca *x509.Certificate
	for _, c := range certs[1:] {
		if sum := sha256.Sum256(c.Raw); bytes.Equal(sum[:], fp) && c.IsCA {
			ca = c
			break
		}
	}
	if ca == nil {
		got := "none"
		if len(certs) > 1 {
			got = Fingerprint(certs[1])
		}
		return nil, "", fmt.Errorf("%w: want %x, server sent CA %s (a wrong address, or a man in the middle)", ErrFingerprintMismatch, fp, got)
	}
	if err := verifyLeaf(certs[0], ca, x509.ExtKeyUsageServerAuth, now); err != nil {
		return nil, "", fmt.Errorf("%w: the server's certificate does not chain to the token's CA: %v", ErrFingerprintMismatch, err)
	}
	site := certs[0].Subject.CommonName
	if !ValidSite(site) {
		return nil, "", fmt.Errorf("%w: server common name %q is not a site name", ErrPairProtocol, site)
	}
	return ca, site, nil
}

// pairProof computes the HMAC of a pairing request.
func pairProof(key []byte, tokenID string, serverFP, clientFP, nonce, exporter []byte, serverSite, clientSite string) []byte {
	m := hmac.New(sha256.New, key)
	for _, part := range [][]byte{[]byte(proofDomain), []byte(tokenID), serverFP, clientFP, nonce, exporter, []byte(serverSite), []byte(clientSite)} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		m.Write(n[:])
		m.Write(part)
	}
	return m.Sum(nil)
}

// watchContext applies ctx's deadline (or DefaultPairTimeout) to conn and
// unblocks conn's I/O when ctx is cancelled. stop undoes both.
func watchContext(ctx context.Context, conn net.Conn) (stop func()) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultPairTimeout)
	}
	_ = conn.SetDeadline(deadline)
	unwatch := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	return func() {
		unwatch()
		_ = conn.SetDeadline(time.Time{})
	}
}

// writePairMessage writes one framed JSON message.
func writePairMessage(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxPairMessage {
		return fmt.Errorf("%w: message of %d bytes exceeds %d", ErrPairProtocol, len(b), maxPairMessage)
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err = w.Write(append(frame, b...))
	return err
}

// readPairMessage reads one framed JSON message into v.
func readPairMessage(r io.Reader, v any) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > maxPairMessage {
		return fmt.Errorf("%w: message length %d (want 1 to %d)", ErrPairProtocol, size, maxPairMessage)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("%w: message cut short: %v", ErrPairProtocol, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: message is not valid JSON: %v", ErrPairProtocol, err)
	}
	return nil
}

// readPairRequest reads the primary's request and checks its shape.
func readPairRequest(r io.Reader) (pairRequest, error) {
	var req pairRequest
	if err := readPairMessage(r, &req); err != nil {
		return pairRequest{}, err
	}
	switch {
	case req.V != pairVersion:
		return pairRequest{}, fmt.Errorf("%w: version %d, want %d", ErrPairProtocol, req.V, pairVersion)
	case !ValidSite(req.Site):
		return pairRequest{}, fmt.Errorf("%w: site %q: %w", ErrPairProtocol, req.Site, ErrInvalidSite)
	case len(req.TokenID) != tokenIDLen:
		return pairRequest{}, fmt.Errorf("%w: token id of %d characters, want %d", ErrPairProtocol, len(req.TokenID), tokenIDLen)
	case len(req.Proof) != sha256.Size:
		return pairRequest{}, fmt.Errorf("%w: proof of %d bytes, want %d", ErrPairProtocol, len(req.Proof), sha256.Size)
	case len(req.CAPEM) == 0 || len(req.CAPEM) > maxCAPEMLen:
		return pairRequest{}, fmt.Errorf("%w: CA certificate of %d bytes", ErrPairProtocol, len(req.CAPEM))
	}
	if req.Address != "" {
		if err := validAddress(req.Address); err != nil {
			return pairRequest{}, fmt.Errorf("%w: address %q: %v", ErrPairProtocol, req.Address, err)
		}
	}
	return req, nil
}
