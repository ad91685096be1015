package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// site is one appliance under test: its data directory and daemon.
type site struct {
	t      *testing.T
	name   string
	data   string
	nbd    string // the unix NBD socket
	repl   int    // the replication port
	extra  []string
	daemon *proc
}

// newSite initialises a site in a fresh directory (not started).
func newSite(t *testing.T, name string, extra ...string) *site {
	t.Helper()
	return newSiteAt(t, name, filepath.Join(t.TempDir(), "data"), extra...)
}

// newSiteAt initialises a site whose data directory is data.
func newSiteAt(t *testing.T, name, data string, extra ...string) *site {
	t.Helper()
	dir := t.TempDir()
	s := &site{
		t:     t,
		name:  name,
		data:  data,
		nbd:   filepath.Join(dir, "nbd.sock"),
		repl:  freePort(t),
		extra: extra,
	}
	s.mustTandem("init", "--site", name)
	return s
}

// start runs `tandem serve` and waits for its sockets.
func (s *site) start() {
	s.t.Helper()
	args := append([]string{"--data", s.data, "serve", "--nbd", "unix:" + s.nbd,
		"--repl", fmt.Sprintf("tcp:127.0.0.1:%d", s.repl)}, s.extra...)
	s.daemon = startProc(s.t, tandemBin, args...)
	waitSocket(s.t, "unix", filepath.Join(s.data, "api.sock"), s.daemon)
	waitSocket(s.t, "unix", s.nbd, s.daemon)
}

// stop stops the daemon with SIGTERM and checks it exited cleanly.
func (s *site) stop() {
	s.t.Helper()
	s.daemon.stop(sigterm, 30*time.Second)
	if code := s.daemon.cmd.ProcessState.ExitCode(); code != 0 {
		s.t.Fatalf("daemon %s exited %d on SIGTERM\n%s", s.name, code, s.daemon.output())
	}
}

// kill kills the daemon with SIGKILL.
func (s *site) kill() { s.daemon.kill9() }

// tandem runs a CLI command against the site.
func (s *site) tandem(args ...string) cmdResult {
	s.t.Helper()
	return runCmd(s.t, 2*time.Minute, tandemBin, append([]string{"--data", s.data}, args...)...)
}

// mustTandem runs a CLI command that has to succeed.
func (s *site) mustTandem(args ...string) string {
	s.t.Helper()
	r := s.tandem(args...)
	if r.Code != 0 {
		s.t.Fatalf("tandem %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// uri is the NBD URI of an export.
func (s *site) uri(export string) string {
	return "nbd+unix:///" + export + "?socket=" + s.nbd
}

// wantFail checks that a CLI command exits with code and a one-line
// "tandem: " error containing want.
func (s *site) wantFail(code int, want string, args ...string) {
	s.t.Helper()
	r := s.tandem(args...)
	if r.Code != code {
		s.t.Fatalf("tandem %s: exit %d, want %d\nstderr: %s", strings.Join(args, " "), r.Code, code, r.Stderr)
	}
	if !strings.HasPrefix(r.Stderr, "tandem: ") || !strings.Contains(r.Stderr, want) {
		s.t.Fatalf("tandem %s: stderr %q, want a 'tandem: ' line containing %q", strings.Join(args, " "), r.Stderr, want)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
