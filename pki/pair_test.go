package pki_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/pki"
)

func TestPairing(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	l := listen(t, secondary)
	tok := issue(t, secondary, l.addr, 0)

	got, err := pair(t, primary, l.addr, tok, pki.WithAdvertiseAddress("10.1.1.1:7800"))
	if err != nil {
		t.Fatalf("PairClient: %v", err)
	}
	ev := l.next(t)
	if ev.err != nil {
		t.Fatalf("PairServer: %v", ev.err)
	}
	if got.Site != "secondary" || got.CAFingerprint != secondary.CAFingerprint() || got.Address != l.addr {
		t.Errorf("PairClient = {%q, %s, %q}, want {secondary, %s, %q}", got.Site, got.CAFingerprint, got.Address, secondary.CAFingerprint(), l.addr)
	}
	if ev.peer.Site != "primary" || ev.peer.CAFingerprint != primary.CAFingerprint() || ev.peer.Address != "10.1.1.1:7800" {
		t.Errorf("PairServer = {%q, %s, %q}, want {primary, %s, 10.1.1.1:7800}", ev.peer.Site, ev.peer.CAFingerprint, ev.peer.Address, primary.CAFingerprint())
	}
	// Both sides keep the other, across a restart.
	for _, side := range []struct {
		id   *pki.Identity
		peer string
		fp   string
	}{{primary, "secondary", secondary.CAFingerprint()}, {secondary, "primary", primary.CAFingerprint()}} {
		reloaded, err := pki.Load(side.id.Dir())
		if err != nil {
			t.Fatal(err)
		}
		p, err := reloaded.Peers().Get(side.peer)
		if err != nil {
			t.Fatalf("%s: Get(%s) after pairing and reload: %v", side.id.Site(), side.peer, err)
		}
		if p.CAFingerprint != side.fp {
			t.Errorf("%s: pinned CA of %s = %s, want %s", side.id.Site(), side.peer, p.CAFingerprint, side.fp)
		}
	}
	if pending, _ := secondary.Tokens().Pending(); len(pending) != 0 {
		t.Errorf("Pending() after pairing = %+v, want none (the token is consumed)", pending)
	}
}

func TestPairingReplayRefused(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	l := listen(t, secondary)
	tok := issue(t, secondary, l.addr, 0)
	if _, err := pair(t, primary, l.addr, tok); err != nil {
		t.Fatalf("first PairClient: %v", err)
	}
	if ev := l.next(t); ev.err != nil {
		t.Fatalf("first PairServer: %v", ev.err)
	}
	// The same token again, from another site, after a secondary restart.
	other := newSite(t, "other", nil)
	restarted, err := pki.Load(secondary.Dir())
	if err != nil {
		t.Fatal(err)
	}
	l2 := listen(t, restarted)
	_, err = pair(t, other, l2.addr, tok)
	wantErr(t, "replayed PairClient", err, pki.ErrPairRefused)
	t.Logf("client: %v", err)
	if !strings.Contains(err.Error(), "already used") {
		t.Errorf("replayed PairClient error %q, want it to say the token was already used", err)
	}
	ev := l2.next(t)
	wantErr(t, "replayed PairServer", ev.err, pki.ErrTokenUsed)
	t.Logf("server: %v", ev.err)
	if _, err := restarted.Peers().Get("other"); err == nil {
		t.Error("replayed token paired the site anyway")
	}
	if _, err := other.Peers().Get("secondary"); err == nil {
		t.Error("refused client pinned the secondary anyway")
	}
}

func TestPairingTokenSurvivesRestart(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	tok := issue(t, secondary, "127.0.0.1:1", 0)
	restarted, err := pki.Load(secondary.Dir())
	if err != nil {
		t.Fatal(err)
	}
	l := listen(t, restarted)
	if _, err := pair(t, primary, l.addr, tok); err != nil {
		t.Fatalf("PairClient with a token issued before the restart: %v", err)
	}
	if ev := l.next(t); ev.err != nil {
		t.Fatalf("PairServer: %v", ev.err)
	}
}

func TestPairingExpiredRefused(t *testing.T) {
	c := newClock()
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", c)
	l := listen(t, secondary)
	tok := issue(t, secondary, l.addr, 0)
	c.Advance(pki.DefaultTokenTTL + time.Second)
	_, err := pair(t, primary, l.addr, tok)
	wantErr(t, "PairClient with an expired token", err, pki.ErrPairRefused)
	if !strings.Contains(err.Error(), "expired") {
		t.Errorf("PairClient error %q, want it to say the token expired", err)
	}
	ev := l.next(t)
	wantErr(t, "PairServer with an expired token", ev.err, pki.ErrTokenExpired)
	t.Logf("server: %v", ev.err)
	if len(secondary.Peers().List()) != 0 || len(primary.Peers().List()) != 0 {
		t.Error("an expired token paired the sites anyway")
	}
}

func TestPairingWrongSecretRefused(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	l := listen(t, secondary)
	tok := issue(t, secondary, l.addr, 0)
	forged := tok
	forged.Secret[0] ^= 0xff
	_, err := pair(t, primary, l.addr, forged)
	wantErr(t, "PairClient with a wrong secret", err, pki.ErrPairRefused)
	ev := l.next(t)
	wantErr(t, "PairServer with a wrong secret", ev.err, pki.ErrProofMismatch)
	t.Logf("client: %v", err)
	t.Logf("server: %v", ev.err)
	if len(secondary.Peers().List()) != 0 {
		t.Error("a wrong secret paired the sites anyway")
	}
	// A failed proof does not burn the token: its holder can still pair.
	if _, err := pair(t, primary, l.addr, tok); err != nil {
		t.Fatalf("PairClient with the right secret after a wrong one: %v", err)
	}
	if ev := l.next(t); ev.err != nil {
		t.Fatalf("PairServer: %v", ev.err)
	}
}

func TestPairingUnknownTokenRefused(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	l := listen(t, secondary)
	tok := issue(t, secondary, l.addr, 0)
	tok.ID = "00000000000000ff"
	_, err := pair(t, primary, l.addr, tok)
	wantErr(t, "PairClient with an unknown token", err, pki.ErrPairRefused)
	wantErr(t, "PairServer with an unknown token", l.next(t).err, pki.ErrTokenUnknown)
}

// A man in the middle with its own CA (even one naming itself after the
// secondary) is refused by the primary before anything is sent.
func TestPairingManInTheMiddleRefused(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	mallory := newSite(t, "secondary", nil) // same name, another CA
	tok := issue(t, secondary, "127.0.0.1:1", 0)
	if _, err := mallory.NewToken("127.0.0.1:1", 0); err != nil {
		t.Fatal(err)
	}
	l := listen(t, mallory)
	tok.Address = l.addr
	_, err := pair(t, primary, l.addr, tok)
	wantErr(t, "PairClient against a man in the middle", err, pki.ErrFingerprintMismatch)
	t.Logf("client: %v", err)
	ev := l.next(t)
	if ev.err == nil {
		t.Error("the man in the middle's PairServer succeeded")
	}
	t.Logf("mallory: %v", ev.err)
	if len(primary.Peers().List()) != 0 || len(mallory.Peers().List()) != 0 {
		t.Error("pairing with a man in the middle pinned a CA")
	}
}

// A plain TCP relay (a NAT, a proxy given by pair token --address) may sit
// in the path: pairing is end to end.
func TestPairingThroughProxy(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	l := listen(t, secondary)
	proxy := tcpProxy(t, l.addr)
	tok := issue(t, secondary, proxy, 0)
	got, err := pair(t, primary, proxy, tok)
	if err != nil {
		t.Fatalf("PairClient through a proxy: %v", err)
	}
	if ev := l.next(t); ev.err != nil {
		t.Fatalf("PairServer: %v", ev.err)
	}
	if got.Address != proxy {
		t.Errorf("pinned address = %q, want the proxy's %q", got.Address, proxy)
	}
	msg, _, err := dialRepl(proxy, primary.ClientTLS("secondary"))
	if err != nil {
		t.Fatalf("replication connection through the proxy: %v", err)
	}
	if want := "hello primary\n"; msg != want {
		t.Errorf("listener greeting = %q, want %q", msg, want)
	}
	if ev := l.next(t); ev.err != nil || ev.site != "primary" {
		t.Errorf("listener saw {site %q, err %v}, want {primary, nil}", ev.site, ev.err)
	}
}

// A pairing client without a certificate gets through the TLS handshake
// (ALPN tandem-pair/1 needs none) but the exchange demands one.
func TestPairingWithoutClientCertificate(t *testing.T) {
	secondary := newSite(t, "secondary", nil)
	l := listen(t, secondary)
	conn, err := tls.Dial("tcp", l.addr, &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{pki.ALPNPairing}, InsecureSkipVerify: true,
	})
	if err != nil {
		t.Fatalf("pairing handshake without a client certificate: %v", err)
	}
	defer conn.Close()
	if got := conn.ConnectionState().NegotiatedProtocol; got != pki.ALPNPairing {
		t.Fatalf("negotiated %q, want %q", got, pki.ALPNPairing)
	}
	// Send a well-formed request: the server must refuse for lack of a
	// certificate, not for its shape.
	hello := make([]byte, 4)
	if _, err := io.ReadFull(conn, hello); err != nil {
		t.Fatalf("read hello: %v", err)
	}
	n := int(hello[0])<<24 | int(hello[1])<<16 | int(hello[2])<<8 | int(hello[3])
	if _, err := io.ReadFull(conn, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	req := `{"v":1,"token_id":"0011223344556677","site":"x","ca_pem":` + jsonString(string(secondary.CAPEM())) + `,"proof":"` + strings.Repeat("A", 43) + `="}`
	frame := []byte{byte(len(req) >> 24), byte(len(req) >> 16), byte(len(req) >> 8), byte(len(req))}
	if _, err := conn.Write(append(frame, req...)); err != nil {
		t.Fatal(err)
	}
	ev := l.next(t)
	wantErr(t, "PairServer without a client certificate", ev.err, pki.ErrPairProtocol)
	t.Logf("server: %v", ev.err)
	if !strings.Contains(ev.err.Error(), "no certificate") {
		t.Errorf("PairServer error %q, want it to say the client presented no certificate", ev.err)
	}
}

func jsonString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// Two primaries racing with the same token: exactly one pairs.
func TestPairingConcurrentUseOnce(t *testing.T) {
	secondary := newSite(t, "secondary", nil)
	l := listen(t, secondary)
	tok := issue(t, secondary, l.addr, 0)
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		p := newSite(t, "p"+string(rune('0'+i)), nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := net.Dial("tcp", l.addr)
			if err != nil {
				errs[i] = err
				return
			}
			defer conn.Close()
			_, errs[i] = pki.PairClient(ctx, conn, p, tok)
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d racing pairings with one token succeeded, want exactly 1 (errors %v)", ok, n, errs)
	}
	if got := len(secondary.Peers().List()); got != 1 {
		t.Errorf("secondary has %d peers, want 1", got)
	}
}

func TestPairClientHonoursContext(t *testing.T) {
	primary := newSite(t, "primary", nil)
	secondary := newSite(t, "secondary", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tok := issue(t, secondary, ln.Addr().String(), 0)
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = pki.PairClient(ctx, conn, primary, tok)
	if err == nil {
		t.Fatal("PairClient against a silent server: got nil error")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("PairClient returned after %v, want about the context's 200ms", d)
	}
}

// tcpProxy relays connections to target and returns its address.
func tcpProxy(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				go func() { io.Copy(c, u); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				<-done
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}

// When the secondary cannot record the token as used, the pairing is
// undone on both sides and the token still works.
func TestPairingUndoneWhenTokenCannotBeConsumed(t *testing.T) {
	primary := newSite(t, "primary", nil)
	fsys := &failFS{}
	secondary, err := pki.Init(t.TempDir(), "secondary", pki.WithFS(fsys))
	if err != nil {
		t.Fatal(err)
	}
	l := listen(t, secondary)
	tok := issue(t, secondary, l.addr, 0)
	eio := errors.New("input/output error")
	fsys.failNext(tok.ID+".json", eio)
	_, err = pair(t, primary, l.addr, tok)
	wantErr(t, "PairClient while the token cannot be consumed", err, pki.ErrPairRefused)
	wantErr(t, "PairServer while the token cannot be consumed", l.next(t).err, eio)
	if len(secondary.Peers().List()) != 0 || len(primary.Peers().List()) != 0 {
		t.Fatalf("a pairing whose token was not consumed left peers: secondary %v, primary %v", secondary.Peers().List(), primary.Peers().List())
	}
	if _, err := pair(t, primary, l.addr, tok); err != nil {
		t.Fatalf("PairClient retry: %v", err)
	}
	if ev := l.next(t); ev.err != nil {
		t.Fatalf("PairServer retry: %v", ev.err)
	}
}
