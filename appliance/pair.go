package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/tandem-dr/tandem/pki"
)

// ErrNotPaired is returned for a peer site this site is not paired with.
var ErrNotPaired = errors.New("appliance: site not paired")

// TokenRequest asks for a pairing token (on the secondary).
type TokenRequest struct {
	// Address is what the primary should dial; empty means this site's
	// replication listener.
	Address string `json:"address,omitempty"`
	// TTL is the token's validity; zero means 15 minutes.
	TTL time.Duration `json:"ttl,omitempty"`
}

// TokenResponse carries a new pairing token.
type TokenResponse struct {
	Token   string    `json:"token"`
	Address string    `json:"address"`
	Expires time.Time `json:"expires"`
}

// PairToken issues a one-time pairing token for a primary to use.
func (d *Daemon) PairToken(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	addr := req.Address
	if addr == "" {
		addr = d.advertisedRepl()
	}
	tok, err := d.id.Tokens().Issue(addr, req.TTL)
	if err != nil {
		return TokenResponse{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	d.log.Info("pairing token issued", "address", addr, "expires", tok.Expires)
	return TokenResponse{Token: tok.Encode(), Address: addr, Expires: tok.Expires}, nil
}

// PairRequest carries a token to pair with (on the primary).
type PairRequest struct {
	Token string `json:"token"`
}

// PeerInfo describes a paired site.
type PeerInfo struct {
	Site          string `json:"site"`
	Address       string `json:"address"`
	CAFingerprint string `json:"ca_fingerprint"`
}

// Pair pairs this site with the secondary that issued the token: it dials
// the token's address, checks the secondary's CA against the token's
// fingerprint, proves the secret, and pins the peer's CA on both sides.
func (d *Daemon) Pair(ctx context.Context, req PairRequest) (PeerInfo, error) {
	tok, err := pki.ParseToken(req.Token)
	if err != nil {
		return PeerInfo{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", tok.Address)
	if err != nil {
		return PeerInfo{}, fmt.Errorf("pair: dial %s: %w", tok.Address, err)
	}
	defer conn.Close()
	peer, err := pki.PairClient(ctx, conn, d.id, tok, pki.WithAdvertiseAddress(d.advertisedRepl()))
	if err != nil {
		return PeerInfo{}, err // PairClient's error names the address and the reason
	}
	d.log.Info("paired", "peer", peer.Site, "address", peer.Address)
	return peerInfo(peer), nil
}

func peerInfo(p pki.PeerInfo) PeerInfo {
	return PeerInfo{Site: p.Site, Address: p.Address, CAFingerprint: p.CAFingerprint}
}

// Peers lists the paired sites.
func (d *Daemon) Peers(ctx context.Context) []PeerInfo {
	var out []PeerInfo
	for _, p := range d.id.Peers().List() {
		out = append(out, peerInfo(p))
	}
	return out
}

// Unpair forgets a paired site: its connections are refused from now on.
func (d *Daemon) Unpair(ctx context.Context, site string) error {
	if _, err := d.id.Peers().Get(site); err != nil {
		return fmt.Errorf("%w: %s", ErrNotPaired, site)
	}
	if err := d.id.Peers().Remove(site); err != nil {
		return fmt.Errorf("unpair %s: %w", site, err)
	}
	d.log.Info("unpaired", "peer", site)
	return nil
}

// advertisedRepl is the address a peer should dial for this site's
// replication listener: the listener's own, with an unspecified host
// (0.0.0.0, ::) replaced by this machine's first non-loopback address.
func (d *Daemon) advertisedRepl() string {
	addr := d.opts.Repl
	if d.replAddr != nil {
		addr = d.replAddr.String()
	} else if _, a, err := ParseAddr(addr); err == nil {
		addr = a
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
		return addr
	}
	return net.JoinHostPort(outwardIP(), port)
}

// outwardIP is the first global unicast address of the machine, or
// loopback when it has none.
func outwardIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsGlobalUnicast() && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}
