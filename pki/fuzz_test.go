package pki_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/pki"
)

func FuzzParseToken(f *testing.F) {
	good := pki.Token{
		ID:            "0102030405060708",
		Address:       "dr.example.com:7800",
		CAFingerprint: strings.Repeat("5a", 32),
		Expires:       time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC),
	}
	good.Secret[0] = 1
	enc := good.Encode()
	for _, seed := range []string{
		enc,
		" " + enc + "\n",
		enc[:len(enc)-3],
		pki.TokenPrefix,
		pki.TokenPrefix + "AAAA",
		"tandem2." + enc[len(pki.TokenPrefix):],
		"",
		"hello world",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := pki.ParseToken(s)
		if err != nil {
			return
		}
		again, err := pki.ParseToken(tok.Encode())
		if err != nil {
			t.Fatalf("ParseToken(Encode(ParseToken(%q))): %v", s, err)
		}
		if again != tok {
			t.Fatalf("round trip of %q: got %+v, want %+v", s, again, tok)
		}
		if tok.Secret == ([pki.SecretSize]byte{}) || tok.Address == "" || len(tok.CAFingerprint) != 64 || len(tok.ID) != 16 {
			t.Fatalf("ParseToken(%q) accepted an incomplete token %+v", s, tok)
		}
	})
}

func frame(body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	return append(b, body...)
}

var validPairRequest = `{"v":1,"token_id":"0011223344556677","site":"primary","ca_pem":"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n","address":"10.0.0.1:7800","proof":"` + strings.Repeat("A", 43) + `="}`

func TestReadPairRequest(t *testing.T) {
	req, err := pki.ReadPairRequest(bytes.NewReader(frame(validPairRequest)))
	if err != nil {
		t.Fatalf("ReadPairRequest(valid): %v", err)
	}
	if req.Site != "primary" || req.Address != "10.0.0.1:7800" || req.ProofLen != 32 {
		t.Errorf("ReadPairRequest(valid) = %+v, want site primary, address 10.0.0.1:7800, 32-byte proof", req)
	}
	for _, bad := range []string{
		strings.Replace(validPairRequest, `"v":1`, `"v":2`, 1),
		strings.Replace(validPairRequest, `"site":"primary"`, `"site":"../etc"`, 1),
		strings.Replace(validPairRequest, `0011223344556677`, `00`, 1),
		strings.Replace(validPairRequest, `10.0.0.1:7800`, `10.0.0.1`, 1),
		strings.Replace(validPairRequest, strings.Repeat("A", 43)+"=", "AAAA", 1),
	} {
		_, err := pki.ReadPairRequest(bytes.NewReader(frame(bad)))
		wantErr(t, "ReadPairRequest("+bad+")", err, pki.ErrPairProtocol)
	}
	_, err = pki.ReadPairRequest(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff}))
	wantErr(t, "ReadPairRequest(huge length)", err, pki.ErrPairProtocol)
}

func FuzzReadPairRequest(f *testing.F) {
	for _, seed := range [][]byte{
		frame(validPairRequest),
		frame(`{"v":2}`),
		frame(`{"v":1,"site":"../x"}`),
		frame(`not json`),
		frame(""),
		{0xff, 0xff, 0xff, 0xff},
		{0, 0, 0, 10, '{'},
		nil,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := pki.ReadPairRequest(bytes.NewReader(b))
		if err != nil {
			return
		}
		if !pki.ValidSite(req.Site) || len(req.TokenID) != 16 || req.ProofLen != 32 || req.CAPEMLen == 0 {
			t.Fatalf("ReadPairRequest accepted %+v", req)
		}
	})
}
