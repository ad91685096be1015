// Package demo is the walk-through behind `tandem demo`: it starts real
// appliances on loopback in a temporary directory, drives them with the
// tandem CLI and real NBD clients (qemu-io, nbdinfo), prints each step and
// checks the data at every one. It owns no product logic: every step is
// a command an operator could type.
package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Options configure a walk-through.
type Options struct {
	// Bin is the tandem binary to run (the running executable by default).
	Bin string
	// Keep leaves the temporary directory in place for a look afterwards.
	Keep bool
}

// Run performs the walk-through, printing to w. It returns an error at
// the first step whose result is not what it should be.
func Run(ctx context.Context, w io.Writer, opts Options) error {
	if opts.Bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find tandem binary: %w", err)
		}
		opts.Bin = exe
	}
	for _, tool := range []string{"qemu-io", "nbdinfo", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("demo needs %s (make deps installs it): %w", tool, err)
		}
	}
	dir, err := os.MkdirTemp("", "tandem-demo-")
	if err != nil {
		return err
	}
	r := &runner{ctx: ctx, w: w, bin: opts.Bin, dir: dir}
	defer func() {
		r.stopAll()
		if opts.Keep {
			fmt.Fprintf(w, "\nkept %s\n", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()
	return r.walk()
}

// runner holds the state of one walk-through.
type runner struct {
	ctx   context.Context
	w     io.Writer
	bin   string
	dir   string
	step  int
	sites []*site
}

// site is one running appliance.
type site struct {
	name string
	data string
	nbd  string // unix socket of its NBD listener
	repl int    // replication port
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

func (r *runner) title(format string, args ...any) {
	r.step++
	fmt.Fprintf(r.w, "\n== %d. %s\n", r.step, fmt.Sprintf(format, args...))
}

func (r *runner) say(format string, args ...any) {
	fmt.Fprintf(r.w, "   "+format+"\n", args...)
}

// run runs a command, echoes it and its output, and fails on a non-zero exit.
func (r *runner) run(name string, args ...string) (string, error) {
	shown := append([]string{filepath.Base(name)}, args...)
	fmt.Fprintf(r.w, "   $ %s\n", strings.Join(shown, " "))
	ctx, cancel := context.WithTimeout(r.ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/usr/sbin:/bin:/sbin:"+os.Getenv("PATH"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	for _, line := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
		if line != "" {
			fmt.Fprintf(r.w, "     %s\n", line)
		}
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w", strings.Join(shown, " "), err)
	}
	return out.String(), nil
}

// quiet runs a tandem CLI command without echoing it (polling).
func (r *runner) quiet(s *site, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(r.ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, r.bin, append([]string{"--data", s.data}, args...)...).Output()
	return string(out), err
}

// tandem runs a tandem CLI command against a site.
func (r *runner) tandem(s *site, args ...string) (string, error) {
	return r.run(r.bin, append([]string{"--data", s.data}, args...)...)
}

// startSite initialises (once) and starts a site's daemon and waits for
// its API and NBD sockets.
func (r *runner) startSite(s *site) error {
	if _, err := os.Stat(filepath.Join(s.data, "config.json")); err != nil {
		if _, err := r.tandem(s, "init", "--site", s.name); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(filepath.Join(r.dir, s.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	args := []string{"--data", s.data, "serve", "--nbd", "unix:" + s.nbd, "--repl", fmt.Sprintf("tcp:127.0.0.1:%d", s.repl)}
	fmt.Fprintf(r.w, "   $ tandem %s &\n", strings.Join(args, " "))
	cmd := exec.Command(r.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	s.cmd, s.log, s.done = cmd, logf, make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()
	for _, sock := range []string{filepath.Join(s.data, "api.sock"), s.nbd} {
		if err := waitSocket(r.ctx, sock, s.done); err != nil {
			return fmt.Errorf("site %s (log %s): %w", s.name, logf.Name(), err)
		}
	}
	return nil
}

// stopSite stops a site: SIGTERM, or SIGKILL with kill9.
func (r *runner) stopSite(s *site, kill9 bool) {
	if s.cmd == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill9 {
		sig = syscall.SIGKILL
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.log.Close()
	s.cmd = nil
}

func (r *runner) stopAll() {
	for _, s := range r.sites {
		r.stopSite(s, false)
	}
}

func (r *runner) newSite(name string) (*site, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &site{
		name: name,
		data: filepath.Join(r.dir, name),
		nbd:  filepath.Join(r.dir, name+"-nbd.sock"),
		repl: port,
	}
	r.sites = append(r.sites, s)
	return s, nil
}

// uri is the NBD URI of an export of a site.
func (s *site) uri(export string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, s.nbd)
}

func waitSocket(ctx context.Context, path string, done <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("daemon exited before listening")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s after 30s", path)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
