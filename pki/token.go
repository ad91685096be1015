package pki

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Pairing tokens.
const (
	// TokenPrefix starts every pairing token of format version 1.
	TokenPrefix = "tandem1."
	// DefaultTokenTTL is how long a token is valid when NewToken is given
	// no ttl.
	DefaultTokenTTL = 15 * time.Minute
	// MaxTokenTTL is the longest validity NewToken accepts.
	MaxTokenTTL = 7 * 24 * time.Hour
	// SecretSize is the size of a token's secret in bytes.
	SecretSize = 32

	// tokenKeep is how long a used or expired token's record is kept, so
	// a replay is refused as such rather than as an unknown token.
	tokenKeep = 24 * time.Hour
	// Binary layout: id, secret, expiry (unix seconds, big endian),
	// CA fingerprint, address length, address, checksum.
	tokenIDSize   = 8
	tokenFixed    = tokenIDSize + SecretSize + 8 + sha256.Size + 1
	tokenSumSize  = 4
	tokenMinSize  = tokenFixed + tokenSumSize
	maxAddressLen = 255
)

// Sentinel errors of the tokens.
var (
	// ErrTokenMalformed is returned by ParseToken for a string that is not
	// a pairing token.
	ErrTokenMalformed = errors.New("pki: malformed pairing token")
	// ErrTokenExpired is returned for a token past its expiry.
	ErrTokenExpired = errors.New("pki: pairing token expired (issue a new one with tandem pair token)")
	// ErrTokenUsed is returned for a token that already paired a site.
	ErrTokenUsed = errors.New("pki: pairing token already used (tokens are one-time; issue a new one)")
	// ErrTokenUnknown is returned for a token this site never issued (or
	// whose record was purged long after it expired).
	ErrTokenUnknown = errors.New("pki: pairing token unknown to this site")
)

// Token is a pairing token: what the primary needs to pair with the
// secondary that issued it. Its String method hides the secret; Encode
// gives the copy-pasteable form.
type Token struct {
	// ID names the token without revealing its secret: 8 random bytes,
	// hex. It may appear in logs.
	ID string
	// Address is the host:port the primary dials.
	Address string
	// CAFingerprint is the SHA-256 of the issuing site's CA, hex: the
	// primary accepts only a server whose chain has this CA.
	CAFingerprint string
	// Secret proves to the secondary that the primary holds the token.
	// It never travels: the primary sends an HMAC keyed by it.
	Secret [SecretSize]byte
	// Expires is when the secondary stops accepting the token.
	Expires time.Time
}

// Encode returns the token as one copy-pasteable string: TokenPrefix and
// the base64url (unpadded) encoding of secret, expiry, CA fingerprint,
// address and a checksum that catches incomplete copies.
func (t Token) Encode() string {
	fp, _ := hex.DecodeString(t.CAFingerprint)
	id, _ := hex.DecodeString(t.ID)
	b := make([]byte, 0, tokenMinSize+len(t.Address))
	b = append(b, pad(id, tokenIDSize)...)
	b = append(b, t.Secret[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(t.Expires.Unix()))
	b = append(b, pad(fp, sha256.Size)...)
	b = append(b, byte(len(t.Address)))
	b = append(b, t.Address...)
	sum := sha256.Sum256(b)
	b = append(b, sum[:tokenSumSize]...)
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

func pad(b []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, b)
	return out
}

// String describes the token without its secret, for logs.
func (t Token) String() string {
	fp := t.CAFingerprint
	if len(fp) > 16 {
		fp = fp[:16] + "…"
	}
	return fmt.Sprintf("pairing token %s for %s (CA %s, expires %s)", t.ID, t.Address, fp, t.Expires.UTC().Format(time.RFC3339))
}

// Expired reports whether the token has expired at now.
func (t Token) Expired(now time.Time) bool { return !now.Before(t.Expires) }

// tokenKey derives the HMAC key of the pairing proof from the secret. The
// secondary keeps only this key, never the secret.
func tokenKey(secret [SecretSize]byte) [sha256.Size]byte {
	return sha256.Sum256(append([]byte("tandem-pair-key/1\x00"), secret[:]...))
}

// ParseToken decodes a token made by Encode. Surrounding white space is
// ignored. It does not check expiry: the issuing site does.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Token{}, fmt.Errorf("%w: empty", ErrTokenMalformed)
	}
	rest, ok := strings.CutPrefix(s, TokenPrefix)
	if !ok {
		if v, _, found := strings.Cut(s, "."); found && strings.HasPrefix(v, "tandem") {
			return Token{}, fmt.Errorf("%w: version %q is not supported (want %q)", ErrTokenMalformed, v, strings.TrimSuffix(TokenPrefix, "."))
		}
		return Token{}, fmt.Errorf("%w: does not start with %q", ErrTokenMalformed, TokenPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return Token{}, fmt.Errorf("%w: not base64url: %v", ErrTokenMalformed, err)
	}
	if len(b) < tokenMinSize {
		return Token{}, fmt.Errorf("%w: %d bytes, want at least %d (incompletely copied?)", ErrTokenMalformed, len(b), tokenMinSize)
	}
	body, sum := b[:len(b)-tokenSumSize], b[len(b)-tokenSumSize:]
	if want := sha256.Sum256(body); !bytes.Equal(sum, want[:tokenSumSize]) {
		return Token{}, fmt.Errorf("%w: checksum mismatch (damaged or incompletely copied)", ErrTokenMalformed)
	}
	var t Token
	t.ID = hex.EncodeToString(body[:tokenIDSize])
	body = body[tokenIDSize:]
	copy(t.Secret[:], body[:SecretSize])
	if t.Secret == ([SecretSize]byte{}) {
		return Token{}, fmt.Errorf("%w: empty secret", ErrTokenMalformed)
	}
	exp := int64(binary.BigEndian.Uint64(body[SecretSize:]))
	if exp <= 0 || exp > 1<<40 {
		return Token{}, fmt.Errorf("%w: expiry %d out of range", ErrTokenMalformed, exp)
	}
	t.Expires = time.Unix(exp, 0).UTC()
	t.CAFingerprint = hex.EncodeToString(body[SecretSize+8 : SecretSize+8+sha256.Size])
	const addrAt = SecretSize + 8 + sha256.Size + 1
	n := int(body[addrAt-1])
	if len(body) != addrAt+n {
		return Token{}, fmt.Errorf("%w: address length %d does not match the token's length", ErrTokenMalformed, n)
	}
	t.Address = string(body[addrAt:])
	if err := validAddress(t.Address); err != nil {
		return Token{}, fmt.Errorf("%w: address %q: %v", ErrTokenMalformed, t.Address, err)
	}
	return t, nil
}

// NewToken issues a one-time pairing token for a primary to pair with this
// site: address is the host:port the primary should dial (this site's
// replication listener as the primary can reach it), ttl its validity
// (DefaultTokenTTL when zero). The token's record — its ID, the HMAC key
// derived from the secret (never the secret), address and expiry — is kept
// under the identity's directory, so a restarted daemon still accepts it.
func (id *Identity) NewToken(address string, ttl time.Duration) (token string, err error) {
	t, err := id.tokens.Issue(address, ttl)
	if err != nil {
		return "", err
	}
	return t.Encode(), nil
}

// Tokens is the set of pairing tokens a site has issued and not yet seen
// used, kept as tokens/ID.json under the identity's directory. It is safe
// for concurrent use; a token is consumed at most once even when several
// pairing attempts race.
type Tokens struct {
	id  *Identity
	dir string
	mu  sync.Mutex
}

// tokenRecord is a token as the issuing site keeps it.
type tokenRecord struct {
	ID      string    `json:"id"`
	Key     string    `json:"key"` // hex of tokenKey(secret)
	Address string    `json:"address"`
	Expires time.Time `json:"expires"`
	Used    time.Time `json:"used,omitzero"`
	UsedBy  string    `json:"used_by,omitempty"`
}

func openTokens(id *Identity) (*Tokens, error) {
	t := &Tokens{id: id, dir: filepath.Join(id.dir, tokensDir)}
	if err := id.fsys.MkdirAll(t.dir, dirPerm); err != nil {
		return nil, fmt.Errorf("open tokens: %w", err)
	}
	return t, nil
}

// Issue creates and records a token; see Identity.NewToken.
func (t *Tokens) Issue(address string, ttl time.Duration) (Token, error) {
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < time.Second || ttl > MaxTokenTTL {
		return Token{}, fmt.Errorf("issue pairing token: validity %v: must be from 1s to %v", ttl, MaxTokenTTL)
	}
	if err := validAddress(address); err != nil {
		return Token{}, fmt.Errorf("issue pairing token: address %q: %v", address, err)
	}
	if len(address) > maxAddressLen {
		return Token{}, fmt.Errorf("issue pairing token: address %q: longer than %d bytes", address, maxAddressLen)
	}
	host, _, _ := net.SplitHostPort(address)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return Token{}, fmt.Errorf("issue pairing token: address %q is not one a peer can dial: give the host or IP the primary reaches this site at", address)
	}
	tok := Token{Address: address, CAFingerprint: t.id.CAFingerprint(), Expires: time.Unix(t.id.now().Add(ttl).Unix(), 0).UTC()}
	var idb [tokenIDSize]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return Token{}, fmt.Errorf("issue pairing token: %w", err)
	}
	tok.ID = hex.EncodeToString(idb[:])
	if _, err := rand.Read(tok.Secret[:]); err != nil {
		return Token{}, fmt.Errorf("issue pairing token: %w", err)
	}
	key := tokenKey(tok.Secret)
	rec := tokenRecord{ID: tok.ID, Key: hex.EncodeToString(key[:]), Address: address, Expires: tok.Expires}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.purgeLocked()
	if err := t.writeLocked(rec); err != nil {
		return Token{}, fmt.Errorf("issue pairing token: %w", err)
	}
	return tok, nil
}

// TokenInfo describes an issued token without its secret, which the
// issuing site does not keep.
type TokenInfo struct {
	// ID is the token's ID.
	ID string `json:"id"`
	// Address is the address the token tells the primary to dial.
	Address string `json:"address"`
	// Expires is when the token stops being accepted.
	Expires time.Time `json:"expires"`
}

// Pending returns the tokens issued and neither used nor expired, sorted
// by expiry.
func (t *Tokens) Pending() ([]TokenInfo, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	recs, err := t.readAllLocked()
	if err != nil {
		return nil, err
	}
	now := t.id.now()
	var out []TokenInfo
	for _, r := range recs {
		if r.Used.IsZero() && now.Before(r.Expires) {
			out = append(out, TokenInfo{ID: r.ID, Address: r.Address, Expires: r.Expires})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Expires.Before(out[j].Expires) })
	return out, nil
}

// consume finds the token named tokenID, checks it is neither used nor
// expired, runs check with its HMAC key and, when check succeeds, marks the
// token used by site. The record is durable before consume returns nil.
func (t *Tokens) consume(tokenID, site string, check func(key []byte) error) error {
	if len(tokenID) != 2*tokenIDSize || strings.Trim(tokenID, "0123456789abcdef") != "" {
		return fmt.Errorf("consume token %q: %w", tokenID, ErrTokenUnknown)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	rec, err := t.readLocked(tokenID)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("consume token %s: %w", tokenID, ErrTokenUnknown)
	} else if err != nil {
		return fmt.Errorf("consume token %s: %w", tokenID, err)
	}
	if !rec.Used.IsZero() {
		return fmt.Errorf("consume token %s (used %s by site %q): %w", tokenID, rec.Used.UTC().Format(time.RFC3339), rec.UsedBy, ErrTokenUsed)
	}
	if now := t.id.now(); !now.Before(rec.Expires) {
		return fmt.Errorf("consume token %s (expired %s): %w", tokenID, rec.Expires.UTC().Format(time.RFC3339), ErrTokenExpired)
	}
	key, err := hex.DecodeString(rec.Key)
	if err != nil || len(key) != sha256.Size {
		return fmt.Errorf("consume token %s: record damaged: bad key", tokenID)
	}
	if err := check(key); err != nil {
		return err
	}
	rec.Used, rec.UsedBy = t.id.now().UTC(), site
	if err := t.writeLocked(rec); err != nil {
		return fmt.Errorf("consume token %s: %w", tokenID, err)
	}
	return nil
}

func (t *Tokens) path(tokenID string) string { return filepath.Join(t.dir, tokenID+".json") }

func (t *Tokens) writeLocked(rec tokenRecord) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return t.id.fsys.WriteFile(t.path(rec.ID), append(b, '\n'), filePerm)
}

func (t *Tokens) readLocked(tokenID string) (tokenRecord, error) {
	b, err := t.id.fsys.ReadFile(t.path(tokenID))
	if err != nil {
		return tokenRecord{}, err
	}
	var rec tokenRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return tokenRecord{}, fmt.Errorf("token record %s: %w", tokenID, err)
	}
	if rec.ID != tokenID {
		return tokenRecord{}, fmt.Errorf("token record %s: holds id %q", tokenID, rec.ID)
	}
	return rec, nil
}

func (t *Tokens) readAllLocked() ([]tokenRecord, error) {
	entries, err := t.id.fsys.ReadDir(t.dir)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	var recs []tokenRecord
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		rec, err := t.readLocked(name)
		if err != nil {
			return nil, fmt.Errorf("list tokens: %w", err)
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// purgeLocked removes the records of tokens expired for longer than
// tokenKeep. It is best effort: a record it cannot read stays.
func (t *Tokens) purgeLocked() {
	entries, err := t.id.fsys.ReadDir(t.dir)
	if err != nil {
		return
	}
	cutoff := t.id.now().Add(-tokenKeep)
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		if rec, err := t.readLocked(name); err == nil && rec.Expires.Before(cutoff) {
			_ = t.id.fsys.Remove(t.path(name))
		}
	}
}
