package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The memory target of issue 3: the daemon's peak resident set.
const applianceRSSLimit = 256 << 20

// perfEnv names a directory: when set (and perf is installed), the
// appliance suite profiles the daemon with `perf record -g` under every
// line that falls short of its target, after the table, and writes the
// recordings and `perf report` summaries there.
const perfEnv = "TANDEM_BENCH_PERF"

// appLine is one row of the appliance table: a fio workload and the
// least ratio of tandem's IOPS to nbdkit's that issue 3 accepts.
type appLine struct {
	name   string
	rw     string
	bs     string
	depth  int
	fsync  bool // flush after every write (fio's fsync=1)
	target float64
}

// appResult is one fio measurement.
type appResult struct {
	mbs, iops float64
	latUS     float64 // mean latency of one I/O (a write and its flush on flush lines)
}

// appTarget is one NBD server under test, on a unix socket.
type appTarget struct {
	name string
	uri  string
}

// benchAppliance measures the journaled appliance against nbdkit's file
// plugin: `tandem serve` with one disk (its backing file in
// DATA/disks/bench.img, every write journaled in badger) and `nbdkit
// file` on a file of the same size in the same directory, both on unix
// sockets, driven in the same run by the same client (fio's nbd engine).
// Both are prefilled over the working set so that reads are of data.
// Each line runs against each server in turn, rounds times, and the best
// run counts. It prints MB/s, IOPS, mean latency, the ratio, issue 3's
// target and PASS or FALL SHORT, the daemon's peak RSS during each line
// (VmHWM, reset through clear_refs before the line) and its peak over the
// whole run (sampled from /proc) against 256 MiB. It reports, not fails:
// it returns an error only when it could not measure. With
// TANDEM_BENCH_PERF=DIR it then profiles the daemon under each line that
// fell short.
func benchAppliance(ctx context.Context, env *benchEnv) error {
	for _, tool := range []string{"fio", "nbdkit"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("appliance bench needs %s (make deps): %w", tool, err)
		}
	}
	diskSize, workSet := int64(4<<30), int64(1<<30)
	runtime, rounds := 3*time.Second, 3
	if env.Short {
		diskSize, workSet, runtime, rounds = 1<<30, 256<<20, 2*time.Second, 1
	}
	lines := []appLine{
		{"seq write 1M", "write", "1m", 16, false, 0.8},
		{"rand write 4K", "randwrite", "4k", 16, false, 1.0},
		{"write+flush 4K", "randwrite", "4k", 1, true, 0.7},
		{"seq read 1M", "read", "1m", 16, false, 0.95},
		{"rand read 4K", "randread", "4k", 16, false, 0.95},
	}

	dir := filepath.Join(env.WorkDir, "appliance")
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("appliance bench dir: %w", err)
	}
	if out, err := exec.CommandContext(ctx, env.Bin, "--data", data, "init", "--site", "bench").CombinedOutput(); err != nil {
		return fmt.Errorf("tandem init: %w: %s", err, out)
	}
	daemon, err := startApplianceDaemon(ctx, env.Bin, dir, data)
	if err != nil {
		return err
	}
	defer daemon.stop()
	sampler := newRSSSampler(daemon.pid(), 100*time.Millisecond)
	defer sampler.stop()
	if out, err := exec.CommandContext(ctx, env.Bin, "--data", data, "disk", "create", "bench",
		"--size", strconv.FormatInt(diskSize>>20, 10)+"M").CombinedOutput(); err != nil {
		return fmt.Errorf("tandem disk create: %w: %s", err, out)
	}

	peerFile := filepath.Join(data, "disks", "nbdkit-peer.img")
	if err := sparseFile(peerFile, diskSize); err != nil {
		return err
	}
	peerSock := filepath.Join(dir, "nbdkit.sock")
	os.Remove(peerSock)
	peer := exec.CommandContext(ctx, "nbdkit", "--foreground", "--unix", peerSock, "file", "file="+peerFile)
	peerLog, err := os.Create(filepath.Join(dir, "nbdkit.log"))
	if err != nil {
		return fmt.Errorf("nbdkit log: %w", err)
	}
	defer peerLog.Close()
	peer.Stderr = peerLog // waitUnix probes leave handshake errors there
	peer.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := peer.Start(); err != nil {
		return fmt.Errorf("start nbdkit: %w", err)
	}
	defer stopProc(peer)
	if err := waitUnix(ctx, peerSock); err != nil {
		return fmt.Errorf("nbdkit: %w", err)
	}

	targets := []appTarget{
		{"nbdkit", "nbd+unix:///?socket=" + peerSock},
		{"tandem", "nbd+unix:///bench?socket=" + daemon.nbdSock},
	}
	// Prefill: one untimed sequential pass over the working set on each,
	// so reads are of data and tandem's journal is past its first batch.
	fill := appLine{name: "prefill", rw: "write", bs: "1m", depth: 16}
	for _, t := range targets {
		if _, err := appFio(ctx, dir, t.uri, fill, workSet, 0); err != nil {
			return fmt.Errorf("prefill %s: %w", t.name, err)
		}
	}

	res := map[string]map[string]appResult{}
	for _, t := range targets {
		res[t.name] = map[string]appResult{}
	}
	linePeak := map[string]int64{} // the daemon's VmHWM during each line
	for _, l := range lines {
		resetOK := sampler.resetPeak() == nil
		for range rounds {
			for _, t := range targets {
				r, err := appFio(ctx, dir, t.uri, l, workSet, runtime)
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, l.name, err)
				}
				if r.iops > res[t.name][l.name].iops {
					res[t.name][l.name] = r
				}
			}
			if daemon.exited() {
				return fmt.Errorf("tandem serve exited during %s; see %s", l.name, daemon.logPath)
			}
		}
		if m, err := procMem(daemon.pid()); err == nil && resetOK {
			linePeak[l.name] = m.HWM
		}
	}
	peak, last := sampler.stop()
	journalBytes := appJournalBytes(ctx, env.Bin, data)

	fmt.Printf("fio nbd engine, unix socket, %d MiB disk, %d MiB working set, best of %d runs of %v per line\n",
		diskSize>>20, workSet>>20, rounds, runtime)
	fmt.Printf("%-15s %3s | %24s | %24s %8s | %6s %6s  %s\n",
		"workload", "QD", "nbdkit MB/s  IOPS  lat", "tandem MB/s  IOPS  lat", "peak RSS", "ratio", "target", "")
	var short []appLine
	for _, l := range lines {
		k, t := res["nbdkit"][l.name], res["tandem"][l.name]
		ratio := 0.0
		if k.iops > 0 {
			ratio = t.iops / k.iops
		}
		verdict := "PASS"
		if ratio < l.target {
			verdict = "FALL SHORT"
			short = append(short, l)
		}
		rss := "-"
		if p, ok := linePeak[l.name]; ok {
			rss = fmt.Sprintf("%.0f MiB", float64(p)/(1<<20))
		}
		fmt.Printf("%-15s %3d | %6.0f %7.0f %6.0fus | %6.0f %7.0f %6.0fus %8s | %5.2fx %5.2fx  %s\n",
			l.name, l.depth, k.mbs, k.iops, k.latUS, t.mbs, t.iops, t.latUS, rss, ratio, l.target, verdict)
	}
	verdict := "PASS"
	if peak.HWM >= applianceRSSLimit || peak.HWM == 0 {
		verdict = "FALL SHORT"
	}
	fmt.Printf("tandem serve peak RSS (VmHWM): %s (target < %d MiB)  %s\n", mib(peak.HWM), applianceRSSLimit>>20, verdict)
	fmt.Printf("  peak anonymous (heap, stacks) %s, peak file-backed (mapped files) %s; at the end RSS %s = %s anon + %s file\n",
		mib(peak.Anon), mib(peak.File), mib(last.RSS), mib(last.Anon), mib(last.File))
	if j, err := journalSizes(filepath.Join(data, "journal")); err == nil {
		fmt.Printf("  journal directory after the run: segments %s, free segments kept for reuse %s, badger %s (+ %s value log),\n"+
			"  for %s of unreleased records\n", mib(j.segments), mib(j.free), mib(j.badger), mib(j.vlog), journalBytes)
	}

	if pdir := os.Getenv(perfEnv); pdir != "" && len(short) > 0 {
		if err := profileDaemon(ctx, pdir, dir, daemon.pid(), targets[1].uri, short, workSet, runtime); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	if len(short) > 0 || verdict != "PASS" {
		fmt.Printf("appliance: %d of %d lines fall short of issue 3's targets\n", len(short), len(lines))
	}
	return nil
}

// applianceDaemon is a running `tandem serve`.
type applianceDaemon struct {
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
	nbdSock string
}

// startApplianceDaemon runs `tandem serve` on data with its NBD and API
// listeners on unix sockets and its replication listener on a free
// loopback port, its output going to dir/serve.log.
func startApplianceDaemon(ctx context.Context, bin, dir, data string) (*applianceDaemon, error) {
	port, err := loopbackPort()
	if err != nil {
		return nil, err
	}
	d := &applianceDaemon{
		logPath: filepath.Join(dir, "serve.log"),
		nbdSock: filepath.Join(dir, "tandem-nbd.sock"),
		done:    make(chan struct{}),
	}
	api := filepath.Join(data, "api.sock")
	os.Remove(d.nbdSock)
	os.Remove(api)
	lf, err := os.Create(d.logPath)
	if err != nil {
		return nil, fmt.Errorf("serve log: %w", err)
	}
	d.cmd = exec.CommandContext(ctx, bin, "--data", data, "serve",
		"--nbd", "unix:"+d.nbdSock, "--api", "unix:"+api, "--repl", "tcp:127.0.0.1:"+strconv.Itoa(port))
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start tandem serve: %w", err)
	}
	go func() { d.cmd.Wait(); lf.Close(); close(d.done) }()
	for _, sock := range []string{api, d.nbdSock} {
		if err := waitUnix(ctx, sock); err != nil {
			d.stop()
			log, _ := os.ReadFile(d.logPath)
			return nil, fmt.Errorf("tandem serve: %w: %s", err, log)
		}
	}
	return d, nil
}

func (d *applianceDaemon) pid() int { return d.cmd.Process.Pid }

func (d *applianceDaemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop ends the daemon with SIGTERM (it syncs its journal and stores on
// the way out), then SIGKILL to its group after 30 s.
func (d *applianceDaemon) stop() {
	if d.exited() {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
}

// loopbackPort returns a TCP port on loopback that was free a moment ago.
func loopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// sparseFile creates a file of size bytes, all hole.
func sparseFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create peer file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size peer file: %w", err)
	}
	return f.Close()
}

// appFio runs one fio job against uri over the first size bytes and
// returns its figures. runtime 0 means one pass, not time based. nbd.go's
// runFio cannot serve here: it names no export and cannot flush.
func appFio(ctx context.Context, dir, uri string, l appLine, size int64, runtime time.Duration) (appResult, error) {
	out := filepath.Join(dir, "fio.json")
	os.Remove(out)
	args := []string{
		"--name=" + l.rw, "--ioengine=nbd", "--uri=" + uri,
		"--rw=" + l.rw, "--bs=" + l.bs, "--iodepth=" + strconv.Itoa(l.depth),
		"--size=" + strconv.FormatInt(size, 10), "--numjobs=1", "--randrepeat=0", "--norandommap",
		"--output-format=json", "--output=" + out,
	}
	if runtime > 0 {
		args = append(args, "--time_based", "--runtime="+strconv.Itoa(int(runtime.Seconds())), "--ramp_time=1")
	}
	if l.fsync {
		args = append(args, "--fsync=1")
	}
	cmd := exec.CommandContext(ctx, "fio", args...)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	if b, err := cmd.CombinedOutput(); err != nil {
		return appResult{}, fmt.Errorf("fio: %w: %s", err, b)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return appResult{}, fmt.Errorf("fio output: %w", err)
	}
	return parseAppFio(raw)
}

// appFioDir is one direction of a fio job's report, with its latency.
type appFioDir struct {
	fioDir
	Lat struct {
		Mean float64 `json:"mean"`
	} `json:"lat_ns"`
}

// parseAppFio reads fio's JSON report of one job.
func parseAppFio(raw []byte) (appResult, error) {
	// fio may print notes before the JSON object.
	if i := bytes.IndexByte(raw, '{'); i > 0 {
		raw = raw[i:]
	}
	var rep struct {
		Jobs []struct {
			Read  appFioDir `json:"read"`
			Write appFioDir `json:"write"`
			Sync  struct {
				Lat struct {
					Mean float64 `json:"mean"`
				} `json:"lat_ns"`
			} `json:"sync"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		return appResult{}, fmt.Errorf("parse fio output: %w", err)
	}
	if len(rep.Jobs) == 0 {
		return appResult{}, errors.New("fio reported no jobs")
	}
	j := rep.Jobs[0]
	d := j.Read
	if j.Write.Iops > d.Iops {
		d = j.Write
	}
	// With fsync=1 every write is followed by its flush: the latency of
	// one I/O is both.
	return appResult{mbs: d.BwBytes / 1e6, iops: d.Iops, latUS: (d.Lat.Mean + j.Sync.Lat.Mean) / 1e3}, nil
}

// mib formats a byte count in MiB.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// appJournalBytes asks the daemon for the bench disk's unreleased journal
// bytes, as `disk info --json` reports them.
func appJournalBytes(ctx context.Context, bin, data string) string {
	out, err := exec.CommandContext(ctx, bin, "--data", data, "disk", "info", "bench", "--json").Output()
	if err != nil {
		return "(disk info failed)"
	}
	var di struct {
		JournalBytes int64 `json:"journal_bytes"`
	}
	if err := json.Unmarshal(out, &di); err != nil {
		return "(disk info unreadable)"
	}
	return mib(di.JournalBytes)
}

// rssSampler polls a process's memory figures until stopped. VmHWM is the
// kernel's own peak, so sampling only has to catch the process alive.
type rssSampler struct {
	pid    int
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	peak procMemory // the largest value seen of each field
	last procMemory
}

// procMemory is what /proc/PID/status says of a process's memory, in
// bytes: the peak resident set and the resident set, anonymous (heap,
// stacks) and file-backed (mapped files such as badger's value log).
type procMemory struct {
	HWM, RSS, Anon, File int64
}

func newRSSSampler(pid int, every time.Duration) *rssSampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &rssSampler{pid: pid, cancel: cancel}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) sample() {
	m, err := procMem(s.pid)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.last = m
	s.peak = procMemory{max(s.peak.HWM, m.HWM), max(s.peak.RSS, m.RSS), max(s.peak.Anon, m.Anon), max(s.peak.File, m.File)}
	s.mu.Unlock()
}

// resetPeak takes a sample, so the peak so far is kept, and resets the
// kernel's VmHWM of the process (clear_refs 5), so that the next samples
// show the peak from now on.
func (s *rssSampler) resetPeak() error {
	s.sample()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", s.pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset peak RSS: %w", err)
	}
	return nil
}

// stop takes a last sample, stops polling and returns the peaks and the
// last sample. It may be called more than once.
func (s *rssSampler) stop() (peak, last procMemory) {
	s.sample()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.last
}

// procMem reads the memory figures of pid from /proc/PID/status.
func procMem(pid int) (procMemory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMemory{}, fmt.Errorf("read process status: %w", err)
	}
	return parseProcStatus(b)
}

// parseProcStatus reads VmHWM, VmRSS, RssAnon and RssFile (in kB) from
// the text of /proc/PID/status.
func parseProcStatus(b []byte) (procMemory, error) {
	var m procMemory
	fields := map[string]*int64{"VmHWM": &m.HWM, "VmRSS": &m.RSS, "RssAnon": &m.Anon, "RssFile": &m.File}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		dst := fields[k]
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return procMemory{}, fmt.Errorf("process status %s: %q", k, v)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return procMemory{}, fmt.Errorf("process status %s: %w", k, err)
		}
		*dst = n << 10
	}
	if m.HWM == 0 {
		return procMemory{}, errors.New("process status: no VmHWM")
	}
	return m, nil
}

// journalFiles sums the sizes of a journal directory's files: the record
// segments of the logs, the free segments kept for reuse, and badger's
// (value log and the rest: LSM tree, memtable WALs, manifest).
type journalFiles struct{ segments, free, vlog, badger int64 }

func journalSizes(dir string) (journalFiles, error) {
	var j journalFiles
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		switch {
		case strings.HasSuffix(e.Name(), ".seg") && filepath.Base(filepath.Dir(path)) == "free":
			j.free += info.Size()
		case strings.HasSuffix(e.Name(), ".seg"):
			j.segments += info.Size()
		case strings.HasSuffix(e.Name(), ".vlog"):
			j.vlog += info.Size()
		default:
			j.badger += info.Size()
		}
		return nil
	})
	return j, err
}

// perfEvents are the system calls counted per line while profiling: the
// syncs, the writes and the futex handoffs between goroutines.
var perfEvents = []string{
	"syscalls:sys_enter_fdatasync", "syscalls:sys_enter_fsync", "syscalls:sys_enter_msync",
	"syscalls:sys_enter_pwrite64", "syscalls:sys_enter_write", "syscalls:sys_enter_futex",
	"context-switches",
}

// profileDaemon runs each line once more against the daemon with `perf
// record -g` and `perf stat` attached to it, and writes to pdir, per line,
// the recording, the report of self time (SLUG.self.txt) and of time
// including callees (SLUG.children.txt). It prints the system calls per
// I/O and the heaviest tandem and badger functions.
func profileDaemon(ctx context.Context, pdir, dir string, pid int, uri string, lines []appLine, size int64, runtime time.Duration) error {
	if _, err := exec.LookPath("perf"); err != nil {
		return fmt.Errorf("%s is set but perf is missing (apt-get install linux-perf): %w", perfEnv, err)
	}
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return fmt.Errorf("perf dir: %w", err)
	}
	for _, l := range lines {
		slug := strings.NewReplacer(" ", "-", "+", "-").Replace(l.name)
		data := filepath.Join(pdir, slug+".perf.data")
		statOut := filepath.Join(pdir, slug+".stat.csv")
		rec := exec.CommandContext(ctx, "perf", "record", "-q", "-F", "999", "-g", "-p", strconv.Itoa(pid), "-o", data)
		stat := exec.CommandContext(ctx, "perf", "stat", "-x", ",", "-e", strings.Join(perfEvents, ","),
			"-p", strconv.Itoa(pid), "-o", statOut)
		for _, c := range []*exec.Cmd{rec, stat} {
			c.Stderr = os.Stderr
			if err := c.Start(); err != nil {
				return fmt.Errorf("start perf: %w", err)
			}
		}
		time.Sleep(300 * time.Millisecond) // perf attaches
		r, ferr := appFio(ctx, dir, uri, l, size, runtime)
		for _, c := range []*exec.Cmd{rec, stat} {
			c.Process.Signal(os.Interrupt)
			c.Wait()
		}
		if ferr != nil {
			return fmt.Errorf("%s under perf: %w", l.name, ferr)
		}
		fmt.Printf("\nprofile of tandem serve under %q: %.0f IOPS, %.0f us mean latency (perf attached)\n", l.name, r.iops, r.latUS)
		if raw, err := os.ReadFile(statOut); err == nil && r.iops > 0 {
			// The counters cover the ramp and runtime of fio plus perf's
			// attach; divide by the I/Os of the measured span, scaled up.
			ios := r.iops * (runtime.Seconds() + 1.3)
			fmt.Printf("  per I/O (approx.):")
			for _, ln := range strings.Split(string(raw), "\n") {
				f := strings.Split(ln, ",")
				if len(f) < 3 || strings.HasPrefix(ln, "#") {
					continue
				}
				n, err := strconv.ParseFloat(f[0], 64)
				if err != nil {
					continue
				}
				fmt.Printf(" %s %.2f", strings.TrimPrefix(strings.TrimPrefix(f[2], "syscalls:sys_enter_"), "context-"), n/ios)
			}
			fmt.Println()
		}
		for _, rep := range []struct {
			file string
			args []string
		}{
			{slug + ".self.txt", []string{"--no-children", "--sort", "symbol", "-g", "none"}},
			{slug + ".children.txt", []string{"--children", "--sort", "symbol", "-g", "none"}},
		} {
			args := append([]string{"report", "-i", data, "--stdio", "--percent-limit", "0.5"}, rep.args...)
			out, err := exec.CommandContext(ctx, "perf", args...).Output()
			if err != nil {
				return fmt.Errorf("perf report: %w", err)
			}
			if err := os.WriteFile(filepath.Join(pdir, rep.file), out, 0o644); err != nil {
				return fmt.Errorf("perf report: %w", err)
			}
		}
		self, _ := os.ReadFile(filepath.Join(pdir, slug+".self.txt"))
		fmt.Println("  self time, top 12:")
		printPerfLines(self, 12, func(string) bool { return true })
		children, _ := os.ReadFile(filepath.Join(pdir, slug+".children.txt"))
		fmt.Println("  including callees, tandem and badger, top 15:")
		printPerfLines(children, 15, func(s string) bool {
			return strings.Contains(s, "tandem-dr/") || strings.Contains(s, "badger")
		})
	}
	fmt.Printf("perf recordings and reports in %s\n", pdir)
	return nil
}

// printPerfLines prints up to n report lines (not comments) that keep
// accepts.
func printPerfLines(report []byte, n int, keep func(string) bool) {
	for _, ln := range strings.Split(string(report), "\n") {
		t := strings.TrimSpace(ln)
		if n == 0 {
			return
		}
		if t == "" || strings.HasPrefix(t, "#") || !keep(t) {
			continue
		}
		fmt.Printf("    %s\n", t)
		n--
	}
}
