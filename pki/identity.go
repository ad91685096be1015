package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Files of an identity directory. cert.pem is written last: an identity
// without it is incomplete, and Init may replace it.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca-key.pem"
	certFile   = "cert.pem"
	keyFile    = "key.pem"
	peersDir   = "peers"
	tokensDir  = "tokens"
	filePerm   = 0o600
	dirPerm    = 0o700
)

// DefaultValidity is how long a site's CA and certificate are valid.
const DefaultValidity = 10 * 365 * 24 * time.Hour

// clockSkew is how far before "now" certificates become valid, so a peer
// whose clock is a little behind accepts a fresh identity.
const clockSkew = time.Hour

// Sentinel errors of the identity.
var (
	// ErrIdentityExists is returned by Init when dir already holds an identity.
	ErrIdentityExists = errors.New("pki: site identity already exists")
	// ErrNoIdentity is returned by Load when dir holds no identity.
	ErrNoIdentity = errors.New("pki: no site identity (run tandem init --site NAME)")
	// ErrInvalidSite is returned for a site name that is not one.
	ErrInvalidSite = errors.New("pki: invalid site name (use letters, digits, '.', '_' and '-', at most 63, starting with a letter or digit)")
	// ErrIdentityCorrupt is returned by Load when the identity's files do
	// not form a valid identity.
	ErrIdentityCorrupt = errors.New("pki: site identity damaged")
)

var siteNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidSite reports whether name can be a site name: 1 to 63 letters,
// digits, '.', '_' and '-', starting with a letter or digit. It is also a
// file name and a certificate's common name.
func ValidSite(name string) bool { return siteNameRE.MatchString(name) }

// Option changes how Init and Load work.
type Option func(*options)

type options struct {
	hosts []string
	now   func() time.Time
	fsys  FS
}

// WithHosts adds host names or IP addresses to the subject alternative
// names of the certificate Init creates (beyond the site name, localhost,
// 127.0.0.1 and ::1). Load ignores it.
func WithHosts(hosts ...string) Option {
	return func(o *options) { o.hosts = append(o.hosts, hosts...) }
}

// WithClock sets the clock used for certificate validity, token expiry and
// verification. The default is time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// WithFS sets the file system the identity, its peers and its tokens live
// on. The default is OSFS.
func WithFS(fsys FS) Option {
	return func(o *options) { o.fsys = fsys }
}

func newOptions(opts []Option) options {
	o := options{now: time.Now, fsys: OSFS{}}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Identity is a site's identity: its CA, its certificate signed by that
// CA, the peers it is paired with and the pairing tokens it has issued.
//
// An Identity is safe for concurrent use. Its certificate and CA never
// change after Load; Peers and Tokens guard their own state.
type Identity struct {
	dir    string
	site   string
	fsys   FS
	now    func() time.Time
	ca     *x509.Certificate
	caPEM  []byte
	caFP   [sha256.Size]byte
	cert   tls.Certificate
	peers  *Peers
	tokens *Tokens
}

// Init creates a site identity under dir: a CA (ECDSA P-256, valid
// DefaultValidity) and a certificate signed by it for both server and
// client authentication, whose common name is site and whose subject
// alternative names are site, localhost, 127.0.0.1, ::1 and the hosts of
// WithHosts. Files are PEM, mode 0600, each written atomically. Init
// refuses to overwrite an existing identity (ErrIdentityExists); a partial
// one left by a failed Init is replaced.
func Init(dir string, site string, opts ...Option) (*Identity, error) {
	o := newOptions(opts)
	if !ValidSite(site) {
		return nil, fmt.Errorf("init identity %q: %w", site, ErrInvalidSite)
	}
	dnsNames := []string{site, "localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, h := range o.hosts {
		h = strings.TrimSpace(h)
		switch ip := net.ParseIP(h); {
		case ip != nil:
			ips = append(ips, ip)
		case h == "" || strings.ContainsAny(h, " /:\t"):
			return nil, fmt.Errorf("init identity %q: host %q is neither a host name nor an IP address", site, h)
		default:
			dnsNames = append(dnsNames, h)
		}
	}
	if err := o.fsys.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("init identity: create %s: %w", dir, err)
	}
	if _, err := o.fsys.Stat(filepath.Join(dir, certFile)); err == nil {
		return nil, fmt.Errorf("init identity in %s: %w", dir, ErrIdentityExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("init identity: %w", err)
	}

	now := o.now()
	notBefore, notAfter := now.Add(-clockSkew), now.Add(DefaultValidity)
	caSerial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("init identity: %w", err)
	}
	leafSerial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("init identity: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("init identity: generate CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: "tandem CA " + site, Organization: []string{"tandem"}, OrganizationalUnit: []string{site}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("init identity: create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("init identity: parse CA certificate: %w", err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("init identity: generate key: %w", err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: leafSerial,
		Subject:      pkix.Name{CommonName: site, Organization: []string{"tandem"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("init identity: create certificate: %w", err)
	}
	caKeyPEM, err := keyPEM(caKey)
	if err != nil {
		return nil, fmt.Errorf("init identity: encode CA key: %w", err)
	}
	leafKeyPEM, err := keyPEM(leafKey)
	if err != nil {
		return nil, fmt.Errorf("init identity: encode key: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{caKeyFile, caKeyPEM},
		{caCertFile, certPEM(caDER)},
		{keyFile, leafKeyPEM},
		{certFile, certPEM(leafDER)}, // last: marks the identity complete
	}
	for _, f := range files {
		if err := o.fsys.WriteFile(filepath.Join(dir, f.name), f.data, filePerm); err != nil {
			return nil, fmt.Errorf("init identity: write %s: %w", f.name, err)
		}
	}
	return Load(dir, opts...)
}

// Load opens the identity Init created under dir, with its peers and
// pending tokens.
func Load(dir string, opts ...Option) (*Identity, error) {
	o := newOptions(opts)
	read := func(name string) ([]byte, error) {
		b, err := o.fsys.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("load identity: read %s: %w", name, err)
		}
		return b, nil
	}
	leafPEM, err := read(certFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load identity from %s: %w", dir, ErrNoIdentity)
	} else if err != nil {
		return nil, err
	}
	caPEM, err := read(caCertFile)
	if err != nil {
		return nil, err
	}
	leafKeyPEM, err := read(keyFile)
	if err != nil {
		return nil, err
	}
	ca, err := parseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("load identity: %s: %w: %v", caCertFile, ErrIdentityCorrupt, err)
	}
	if !ca.IsCA {
		return nil, fmt.Errorf("load identity: %s: %w: not a CA certificate", caCertFile, ErrIdentityCorrupt)
	}
	cert, err := tls.X509KeyPair(append(append([]byte{}, leafPEM...), caPEM...), leafKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("load identity: %s and %s: %w: %v", certFile, keyFile, ErrIdentityCorrupt, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("load identity: %s: %w: %v", certFile, ErrIdentityCorrupt, err)
	}
	cert.Leaf = leaf
	site := leaf.Subject.CommonName
	if !ValidSite(site) {
		return nil, fmt.Errorf("load identity: %s: common name %q: %w", certFile, site, ErrInvalidSite)
	}
	if err := verifyLeaf(leaf, ca, x509.ExtKeyUsageAny, o.now()); err != nil {
		return nil, fmt.Errorf("load identity: %s: %w: %v", certFile, ErrIdentityCorrupt, err)
	}
	id := &Identity{
		dir:   dir,
		site:  site,
		fsys:  o.fsys,
		now:   o.now,
		ca:    ca,
		caPEM: certPEM(ca.Raw),
		caFP:  sha256.Sum256(ca.Raw),
		cert:  cert,
	}
	if id.peers, err = openPeers(id); err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	if id.tokens, err = openTokens(id); err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	return id, nil
}

// Site is the site's name.
func (id *Identity) Site() string { return id.site }

// Dir is the directory the identity lives in.
func (id *Identity) Dir() string { return id.dir }

// CAFingerprint is the SHA-256 of the site CA's DER encoding, lower-case hex.
func (id *Identity) CAFingerprint() string { return hex.EncodeToString(id.caFP[:]) }

// Certificate is the site's certificate with its private key; its chain
// holds the site CA after the leaf.
func (id *Identity) Certificate() tls.Certificate { return id.cert }

// CAPEM is the site CA's certificate, PEM encoded. It is public: peers pin
// it, and NBD clients verify the appliance with it.
func (id *Identity) CAPEM() []byte { return bytes.Clone(id.caPEM) }

// CA is the site CA's certificate.
func (id *Identity) CA() *x509.Certificate { return id.ca }

// Peers is the set of sites this site is paired with.
func (id *Identity) Peers() *Peers { return id.peers }

// Tokens is the set of pairing tokens this site has issued.
func (id *Identity) Tokens() *Tokens { return id.tokens }

// Fingerprint returns the CA fingerprint of a certificate as CAFingerprint
// does: the SHA-256 of its DER encoding, lower-case hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// verifyLeaf checks that leaf was issued by ca (and only ca: no system
// roots, no intermediates) for usage at time now.
func verifyLeaf(leaf, ca *x509.Certificate, usage x509.ExtKeyUsage, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{usage},
	})
	return err
}

func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("random serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func keyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// parseCertPEM parses exactly one PEM certificate.
func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("PEM block is %q, want CERTIFICATE", block.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// IssueClientCertificate creates a client certificate signed by this
// site's CA, for an NBD client that should present one (qemu's
// tls-creds-x509 client-cert.pem and client-key.pem): common name
// "nbd-client:" + name (never a site name, so a peer can never take it for
// this site's certificate), client authentication only, valid for validity (DefaultValidity when
// zero). It reads the CA key from the identity's directory.
func (id *Identity) IssueClientCertificate(name string, validity time.Duration) (certPEMBytes, keyPEMBytes []byte, err error) {
	if name == "" || len(name) > 64 {
		return nil, nil, fmt.Errorf("issue client certificate: name %q: want 1 to 64 bytes", name)
	}
	if validity == 0 {
		validity = DefaultValidity
	}
	b, err := id.fsys.ReadFile(filepath.Join(id.dir, caKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate: read CA key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, nil, fmt.Errorf("issue client certificate: %s: %w: no PEM block", caKeyFile, ErrIdentityCorrupt)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate: %s: %w: %v", caKeyFile, ErrIdentityCorrupt, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate: generate key: %w", err)
	}
	now := id.now()
	notAfter := now.Add(validity)
	if notAfter.After(id.ca.NotAfter) {
		notAfter = id.ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "nbd-client:" + name, Organization: []string{"tandem"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, id.ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate: %w", err)
	}
	kp, err := keyPEM(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate: encode key: %w", err)
	}
	return certPEM(der), kp, nil
}
