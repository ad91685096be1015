package pki_test

import (
	"testing"

	"github.com/tandem-dr/tandem/pki"
)

func TestPeersPersist(t *testing.T) {
	a := newSite(t, "a", nil)
	b := newSite(t, "b", nil)
	c := newSite(t, "c", nil)
	if err := a.Peers().Add("c", c.CAPEM(), "10.0.0.3:7800"); err != nil {
		t.Fatalf("Add(c): %v", err)
	}
	if err := a.Peers().Add("b", b.CAPEM(), ""); err != nil {
		t.Fatalf("Add(b): %v", err)
	}
	reloaded, err := pki.Load(a.Dir())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	list := reloaded.Peers().List()
	if len(list) != 2 || list[0].Site != "b" || list[1].Site != "c" {
		t.Fatalf("List() after reload = %+v, want b and c in order", list)
	}
	got, err := reloaded.Peers().Get("c")
	if err != nil {
		t.Fatalf("Get(c): %v", err)
	}
	if got.Address != "10.0.0.3:7800" || got.CAFingerprint != c.CAFingerprint() {
		t.Errorf("Get(c) = {Address %q, CAFingerprint %s}, want {10.0.0.3:7800, %s}", got.Address, got.CAFingerprint, c.CAFingerprint())
	}
	if err := reloaded.Peers().Remove("c"); err != nil {
		t.Fatalf("Remove(c): %v", err)
	}
	_, err = reloaded.Peers().Get("c")
	wantErr(t, "Get after Remove", err, pki.ErrPeerUnknown)
	again, err := pki.Load(a.Dir())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if list := again.Peers().List(); len(list) != 1 || list[0].Site != "b" {
		t.Errorf("List() after Remove and reload = %+v, want only b", list)
	}
	err = again.Peers().Remove("c")
	wantErr(t, "Remove of an unpaired site", err, pki.ErrPeerUnknown)
}

func TestPeersAddRefuses(t *testing.T) {
	a := newSite(t, "a", nil)
	b := newSite(t, "b", nil)
	if err := a.Peers().Add("b", b.CAPEM(), ""); err != nil {
		t.Fatal(err)
	}
	leafPEM, _, err := b.IssueClientCertificate("x", 0)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, site, addr string
		ca               []byte
		want             error
	}{
		{"own CA", "z", "", a.CAPEM(), pki.ErrPeerInvalid},
		{"own name", "a", "", b.CAPEM(), pki.ErrPeerInvalid},
		{"CA already pinned for b", "b2", "", b.CAPEM(), pki.ErrPeerInvalid},
		{"not a CA", "z", "", leafPEM, pki.ErrPeerInvalid},
		{"not PEM", "z", "", []byte("hello"), pki.ErrPeerInvalid},
		{"bad site", "../etc", "", b.CAPEM(), pki.ErrInvalidSite},
		{"bad address", "b", "no-port", b.CAPEM(), pki.ErrPeerInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := a.Peers().Add(tc.site, tc.ca, tc.addr)
			wantErr(t, "Add", err, tc.want)
		})
	}
	// Re-pairing b (it was re-initialised) replaces its CA.
	b2 := newSite(t, "b", nil)
	if err := a.Peers().Add("b", b2.CAPEM(), "h:1"); err != nil {
		t.Fatalf("re-Add(b): %v", err)
	}
	got, _ := a.Peers().Get("b")
	if got.CAFingerprint != b2.CAFingerprint() || got.Address != "h:1" {
		t.Errorf("after re-Add, b = {%s, %q}, want {%s, h:1}", got.CAFingerprint, got.Address, b2.CAFingerprint())
	}
}
