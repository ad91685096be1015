package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Sentinel errors of the peers.
var (
	// ErrPeerUnknown is returned for a site that is not paired.
	ErrPeerUnknown = errors.New("pki: site is not paired")
	// ErrPeerInvalid is returned by Add for a CA certificate or address
	// that cannot be a peer's.
	ErrPeerInvalid = errors.New("pki: invalid peer")
)

// PeerInfo describes a paired site.
type PeerInfo struct {
	// Site is the peer's site name.
	Site string `json:"site"`
	// Address is the host:port of the peer's replication listener, or
	// empty when this site was never told it (a secondary learns its
	// primary's address only when the primary offers one while pairing).
	Address string `json:"address,omitempty"`
	// CAFingerprint is the SHA-256 of the peer CA's DER encoding, hex.
	CAFingerprint string `json:"ca_fingerprint"`
	// CAPEM is the peer's CA certificate, PEM encoded: the only CA this
	// site trusts for the peer.
	CAPEM []byte `json:"-"`
}

// Peers is the set of sites a site is paired with, kept as files under the
// identity's directory: peers/SITE.pem (the pinned CA certificate, written
// last) and peers/SITE.addr (the address).
//
// Peers is safe for concurrent use; changes are durable when Add or Remove
// returns and are seen at once by the TLS configurations of the Identity.
type Peers struct {
	id  *Identity
	dir string

	mu sync.RWMutex
	m  map[string]peer
}

type peer struct {
	info PeerInfo
	ca   *x509.Certificate
}

func openPeers(id *Identity) (*Peers, error) {
	p := &Peers{id: id, dir: filepath.Join(id.dir, peersDir), m: map[string]peer{}}
	if err := id.fsys.MkdirAll(p.dir, dirPerm); err != nil {
		return nil, fmt.Errorf("open peers: %w", err)
	}
	entries, err := id.fsys.ReadDir(p.dir)
	if err != nil {
		return nil, fmt.Errorf("open peers: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		site, ok := strings.CutSuffix(name, ".pem")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		if !ValidSite(site) {
			return nil, fmt.Errorf("open peers: %s: %w", name, ErrInvalidSite)
		}
		caPEM, err := id.fsys.ReadFile(filepath.Join(p.dir, name))
		if err != nil {
			return nil, fmt.Errorf("open peers: %w", err)
		}
		ca, err := parsePeerCA(caPEM)
		if err != nil {
			return nil, fmt.Errorf("open peers: %s: %w", name, err)
		}
		addr, err := id.fsys.ReadFile(filepath.Join(p.dir, site+".addr"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open peers: %w", err)
		}
		p.m[site] = peer{
			info: PeerInfo{Site: site, Address: strings.TrimSpace(string(addr)), CAFingerprint: Fingerprint(ca), CAPEM: caPEM},
			ca:   ca,
		}
	}
	return p, nil
}

// Add pairs with site: from now on a certificate is accepted as site's
// only when it chains to the CA certificate caPEM. address is the host:port
// of site's replication listener, or empty when unknown. Adding a site that
// is already paired replaces its CA and address (re-pairing after the peer
// was re-initialised). Add refuses this site's own CA and a CA already
// pinned for another site.
func (p *Peers) Add(site string, caPEM []byte, address string) error {
	if !ValidSite(site) {
		return fmt.Errorf("add peer %q: %w", site, ErrInvalidSite)
	}
	if site == p.id.site {
		return fmt.Errorf("add peer %q: %w: it is this site's own name", site, ErrPeerInvalid)
	}
	if err := validAddress(address); address != "" && err != nil {
		return fmt.Errorf("add peer %q: %w: address %q: %v", site, ErrPeerInvalid, address, err)
	}
	ca, err := parsePeerCA(caPEM)
	if err != nil {
		return fmt.Errorf("add peer %q: %w", site, err)
	}
	fp := Fingerprint(ca)
	if fp == p.id.CAFingerprint() {
		return fmt.Errorf("add peer %q: %w: the CA is this site's own", site, ErrPeerInvalid)
	}
	caPEM = certPEM(ca.Raw)

	p.mu.Lock()
	defer p.mu.Unlock()
	for other, q := range p.m {
		if other != site && q.info.CAFingerprint == fp {
			return fmt.Errorf("add peer %q: %w: its CA is already paired as site %q", site, ErrPeerInvalid, other)
		}
	}
	// The address first, the CA last: a peer exists once its .pem does.
	addrFile := filepath.Join(p.dir, site+".addr")
	if err := p.id.fsys.WriteFile(addrFile, []byte(address+"\n"), filePerm); err != nil {
		return fmt.Errorf("add peer %q: write address: %w", site, err)
	}
	if err := p.id.fsys.WriteFile(filepath.Join(p.dir, site+".pem"), caPEM, filePerm); err != nil {
		return fmt.Errorf("add peer %q: write CA: %w", site, err)
	}
	p.m[site] = peer{info: PeerInfo{Site: site, Address: address, CAFingerprint: fp, CAPEM: caPEM}, ca: ca}
	return nil
}

// Remove unpairs site: its certificates are no longer accepted, including
// on new connections that resume an earlier session.
func (p *Peers) Remove(site string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.m[site]; !ok {
		return fmt.Errorf("remove peer %q: %w", site, ErrPeerUnknown)
	}
	if err := p.id.fsys.Remove(filepath.Join(p.dir, site+".pem")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove peer %q: %w", site, err)
	}
	delete(p.m, site)
	if err := p.id.fsys.Remove(filepath.Join(p.dir, site+".addr")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove peer %q: address file: %w", site, err)
	}
	return nil
}

// List returns the paired sites, sorted by name.
func (p *Peers) List() []PeerInfo {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]PeerInfo, 0, len(p.m))
	for _, q := range p.m {
		out = append(out, clonePeer(q.info))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	return out
}

// Get returns the paired site named site, or ErrPeerUnknown.
func (p *Peers) Get(site string) (PeerInfo, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	q, ok := p.m[site]
	if !ok {
		return PeerInfo{}, fmt.Errorf("peer %q: %w", site, ErrPeerUnknown)
	}
	return clonePeer(q.info), nil
}

// ca returns the pinned CA of site.
func (p *Peers) ca(site string) (*x509.Certificate, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	q, ok := p.m[site]
	return q.ca, ok
}

func clonePeer(info PeerInfo) PeerInfo {
	info.CAPEM = bytes.Clone(info.CAPEM)
	return info
}

// parsePeerCA parses a peer's CA certificate and checks it is one.
func parsePeerCA(caPEM []byte) (*x509.Certificate, error) {
	ca, err := parseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: CA certificate: %v", ErrPeerInvalid, err)
	}
	if !ca.IsCA || !ca.BasicConstraintsValid {
		return nil, fmt.Errorf("%w: certificate %q is not a CA", ErrPeerInvalid, ca.Subject.CommonName)
	}
	return ca, nil
}

// validAddress checks that addr is host:port with a numeric port.
func validAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}
