package pki_test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/pki"
)

func TestTokenRoundTrip(t *testing.T) {
	in := pki.Token{
		ID:            "0102030405060708",
		Address:       "[2001:db8::1]:7800",
		CAFingerprint: strings.Repeat("ab", 32),
		Expires:       time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	for i := range in.Secret {
		in.Secret[i] = byte(i + 1)
	}
	s := in.Encode()
	if !strings.HasPrefix(s, pki.TokenPrefix) {
		t.Fatalf("Encode() = %q, want prefix %q", s, pki.TokenPrefix)
	}
	if strings.ContainsAny(s, " \n+/=") {
		t.Errorf("Encode() = %q: not one copy-pasteable word", s)
	}
	got, err := pki.ParseToken("  " + s + "\n")
	if err != nil {
		t.Fatalf("ParseToken(Encode()): %v", err)
	}
	if got != in {
		t.Errorf("ParseToken(Encode(t)) = %+v, want %+v", got, in)
	}
	if str := in.String(); strings.Contains(str, s[len(pki.TokenPrefix):len(pki.TokenPrefix)+20]) || !strings.Contains(str, in.ID) {
		t.Errorf("String() = %q: want the ID and no encoded secret", str)
	}
}

func TestParseTokenGarbage(t *testing.T) {
	id := newSite(t, "b", nil)
	good, err := id.NewToken("127.0.0.1:7800", 0)
	if err != nil {
		t.Fatal(err)
	}
	body := good[len(pki.TokenPrefix):]
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte{}, raw...)
	flipped[10] ^= 1
	cases := []struct{ name, in, wantMsg string }{
		{"empty", "", "empty"},
		{"spaces", "   ", "empty"},
		{"no prefix", "hello", "does not start with"},
		{"future version", "tandem2." + body, `version "tandem2" is not supported`},
		{"not base64", pki.TokenPrefix + "!!!!", "not base64url"},
		{"truncated", good[:len(good)-10], ""},
		{"short", pki.TokenPrefix + "AAAA", "want at least"},
		{"bit flipped", pki.TokenPrefix + base64.RawURLEncoding.EncodeToString(flipped), "checksum mismatch"},
		{"padded", good + "==", "not base64url"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pki.ParseToken(tc.in)
			wantErr(t, "ParseToken", err, pki.ErrTokenMalformed)
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("ParseToken error %q, want it to say %q", err, tc.wantMsg)
			}
		})
	}
}

func TestNewToken(t *testing.T) {
	c := newClock()
	id := newSite(t, "b", c)
	s, err := id.NewToken("dr-b.example:7801", 0)
	if err != nil {
		t.Fatalf("NewToken: %v", err)
	}
	tok, err := pki.ParseToken(s)
	if err != nil {
		t.Fatalf("ParseToken: %v", err)
	}
	if tok.Address != "dr-b.example:7801" || tok.CAFingerprint != id.CAFingerprint() {
		t.Errorf("token = {%q, %s}, want {dr-b.example:7801, %s}", tok.Address, tok.CAFingerprint, id.CAFingerprint())
	}
	if got, want := tok.Expires.Sub(c.Now()), pki.DefaultTokenTTL; got < want-time.Second || got > want {
		t.Errorf("token valid for %v, want %v", got, want)
	}
	s2, err := id.NewToken("dr-b.example:7801", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if s2 == s {
		t.Error("two NewToken calls gave the same token")
	}
	pending, err := id.Tokens().Pending()
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	if len(pending) != 2 || pending[1].ID != tok.ID {
		t.Errorf("Pending() = %+v, want 2 tokens, the 15-minute one %s last", pending, tok.ID)
	}
	c.Advance(2 * time.Minute)
	if pending, _ := id.Tokens().Pending(); len(pending) != 1 {
		t.Errorf("Pending() after 2 minutes = %+v, want only the 15-minute token", pending)
	}

	for _, bad := range []struct {
		addr string
		ttl  time.Duration
	}{
		{"0.0.0.0:7800", 0},
		{"[::]:7800", 0},
		{"host", 0},
		{"host:0", 0},
		{"host:7800", -time.Second},
		{"host:7800", 8 * 24 * time.Hour},
	} {
		if _, err := id.NewToken(bad.addr, bad.ttl); err == nil {
			t.Errorf("NewToken(%q, %v): got nil error, want one", bad.addr, bad.ttl)
		}
	}
}

func TestTokenRecordsPurged(t *testing.T) {
	c := newClock()
	id := newSite(t, "b", c)
	old := issue(t, id, "h:1", time.Minute)
	if old.Expired(c.Now()) {
		t.Error("fresh token: Expired() = true, want false")
	}
	c.Advance(2 * time.Minute)
	if !old.Expired(c.Now()) {
		t.Error("token 2 minutes after a 1-minute validity: Expired() = false, want true")
	}
	records := func() int {
		entries, err := os.ReadDir(filepath.Join(id.Dir(), "tokens"))
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	issue(t, id, "h:1", 0)
	if got := records(); got != 2 {
		t.Errorf("token records 2 minutes on = %d, want 2 (the expired one is kept a day to name replays)", got)
	}
	c.Advance(25 * time.Hour)
	issue(t, id, "h:1", 0)
	if got := records(); got != 1 {
		t.Errorf("token records a day on = %d, want only the new one", got)
	}
}
