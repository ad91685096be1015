package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-dr/tandem/attach"
)

// fuseTarget is one file a loop device is attached to: how to bring it
// up and down. start returns the file's path.
type fuseTarget struct {
	name  string
	start func(ctx context.Context) (path string, stop func(), err error)
}

// fuseLine is one fio workload of the table.
type fuseLine struct {
	name, rw, bs string
}

// fuseResult is one measurement.
type fuseResult struct{ mbs, iops float64 }

// benchFUSE attaches loop devices with --direct-io=on to four files and
// runs the same fio workload (libaio, O_DIRECT, sequential 1 MiB and
// random 4 KiB at queue depth 16, reads and writes) on each, in the same
// run, interleaved, best of the rounds:
//
//   - loop/file: the raw image itself, the limit;
//   - nbdfuse: the peer, nbdfuse over nbdkit's file plugin on the image;
//   - fusefs: package fusefs over the image, without journal (the
//     tests/bench/fusefile helper), the floor under tandem's file;
//   - tandem: `tandem serve --fuse`, the journaled disk, when the binary
//     has it.
//
// It prints MB/s and IOPS and tandem's ratio to the peer (fusefs's when
// the daemon's FUSE is not built yet).
func benchFUSE(ctx context.Context, env *benchEnv) error {
	for _, tool := range []string{"fio", "nbdkit", "nbdfuse", "fusermount3", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("fuse bench needs %s (make deps): %w", tool, err)
		}
	}
	size := int64(2 << 30)
	runtime, rounds := 6*time.Second, 2
	if env.Short {
		size, runtime, rounds = 512<<20, 3*time.Second, 1
	}
	dir := filepath.Join(env.WorkDir, "fuse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	helper := filepath.Join(dir, "fusefile")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", helper, "./tests/bench/fusefile").CombinedOutput(); err != nil {
		return fmt.Errorf("build fusefile helper: %w: %s", err, out)
	}
	// Every target gets an image of its own, filled with data, so no
	// target reads holes and writes of one do not disturb another.
	images := map[string]string{}
	for _, name := range []string{"loop", "nbdfuse", "fusefs", "tandem"} {
		images[name] = filepath.Join(dir, name+".img")
		if err := fillFile(images[name], size); err != nil {
			return err
		}
	}
	targets := []fuseTarget{
		{"loop/file", func(ctx context.Context) (string, func(), error) {
			return images["loop"], func() {}, nil
		}},
		{"nbdfuse", func(ctx context.Context) (string, func(), error) {
			return startNBDFuse(ctx, filepath.Join(dir, "m-nbdfuse"), images["nbdfuse"], size)
		}},
		{"fusefs", func(ctx context.Context) (string, func(), error) {
			return startFusefile(ctx, helper, filepath.Join(dir, "m-fusefs"), images["fusefs"], size)
		}},
	}
	tandemOK, why := tandemHasFUSE(ctx, env.Bin)
	if tandemOK {
		targets = append(targets, fuseTarget{"tandem", func(ctx context.Context) (string, func(), error) {
			return startTandemFUSE(ctx, env.Bin, filepath.Join(dir, "tandem-data"), filepath.Join(dir, "m-tandem"), images["tandem"], size)
		}})
	} else {
		fmt.Printf("tandem (journaled): not measured: %s\n", why)
	}

	devs := map[string]string{}
	for _, t := range targets {
		path, stop, err := t.start(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		defer stop()
		dev, err := attach.Loop(ctx, path, attach.LoopOptions{DirectIO: true})
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		defer attach.Detach(context.Background(), dev)
		devs[t.name] = dev
	}

	lines := []fuseLine{
		{"seq read 1M", "read", "1m"},
		{"seq write 1M", "write", "1m"},
		{"rand read 4K", "randread", "4k"},
		{"rand write 4K", "randwrite", "4k"},
	}
	res := map[string]map[string]fuseResult{}
	for _, t := range targets {
		res[t.name] = map[string]fuseResult{}
	}
	for _, l := range lines {
		for range rounds {
			for _, t := range targets {
				mbs, iops, err := fuseFio(ctx, dir, devs[t.name], l, runtime)
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, l.name, err)
				}
				if best := res[t.name][l.name]; mbs > best.mbs {
					res[t.name][l.name] = fuseResult{mbs, iops}
				}
			}
		}
	}

	subject := "tandem"
	if !tandemOK {
		subject = "fusefs"
	}
	fmt.Printf("loop device (--direct-io=on, libaio, QD16) on each file; %d MiB, best of %d x %v\n", size>>20, rounds, runtime)
	fmt.Printf("%-14s", "workload")
	for _, t := range targets {
		fmt.Printf(" | %-17s", t.name)
	}
	fmt.Printf(" | %s/nbdfuse\n", subject)
	worst := 0.0
	for _, l := range lines {
		fmt.Printf("%-14s", l.name)
		for _, t := range targets {
			r := res[t.name][l.name]
			fmt.Printf(" | %6.0f MB/s %5.1fk", r.mbs, r.iops/1000)
		}
		ratio := res[subject][l.name].mbs / res["nbdfuse"][l.name].mbs
		if worst == 0 || ratio < worst {
			worst = ratio
		}
		fmt.Printf(" | %5.2fx\n", ratio)
	}
	fmt.Printf("worst %s/nbdfuse: %.2fx (target >= 1.00x); loop/file is the limit\n", subject, worst)
	return nil
}

// waitFile waits until path exists with the given size.
func waitFile(ctx context.Context, path string, size int64, cmd *exec.Cmd) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := os.Stat(path); err == nil && st.Size() == size {
			return nil
		}
		if cmd != nil && cmd.ProcessState != nil {
			return fmt.Errorf("%s exited", cmd.Path)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not appear with %d bytes within 30s", path, size)
}

// startBackground starts argv with its output going to log and returns
// a stop that unmounts mnt (when set) and ends the process.
func startBackground(ctx context.Context, argv []string, log, mnt string) (*exec.Cmd, func(), error) {
	lf, err := os.Create(log)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/usr/sbin:/bin:/sbin:"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); lf.Close(); close(done) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if mnt != "" {
			exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
	}
	return cmd, stop, nil
}

// startNBDFuse is the peer: nbdfuse on MNT, over nbdkit's file plugin.
func startNBDFuse(ctx context.Context, mnt, image string, size int64) (string, func(), error) {
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", nil, err
	}
	cmd, stop, err := startBackground(ctx, []string{"nbdfuse", mnt, "--socket-activation", "nbdkit", "file", image}, mnt+".log", mnt)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(mnt, "nbd")
	if err := waitFile(ctx, path, size, cmd); err != nil {
		stop()
		return "", nil, fmt.Errorf("nbdfuse: %w", err)
	}
	return path, func() {
		// nbdfuse ends when its mount goes away.
		exec.Command("fusermount3", "-u", mnt).Run()
		stop()
	}, nil
}

// startFusefile mounts the image through package fusefs with the
// fusefile helper.
func startFusefile(ctx context.Context, helper, mnt, image string, size int64) (string, func(), error) {
	argv := []string{helper, "-file", image, "-mount", mnt, "-name", "bench"}
	if p := os.Getenv("FUSE_BENCH_CPUPROFILE"); p != "" {
		argv = append(argv, "-cpuprofile", p)
	}
	cmd, stop, err := startBackground(ctx, argv, mnt+".log", mnt)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(mnt, "disks", "bench")
	if err := waitFile(ctx, path, size, cmd); err != nil {
		stop()
		return "", nil, fmt.Errorf("fusefile: %w", err)
	}
	return path, stop, nil
}

// tandemHasFUSE reports whether the binary's serve command has --fuse.
func tandemHasFUSE(ctx context.Context, bin string) (bool, string) {
	out, err := exec.CommandContext(ctx, bin, "serve", "--help").CombinedOutput()
	if err != nil {
		return false, fmt.Sprintf("%s serve --help: %v", bin, err)
	}
	if !strings.Contains(string(out), "--fuse") {
		return false, "`tandem serve` has no --fuse yet"
	}
	return true, ""
}

// startTandemFUSE runs the daemon with its FUSE mount and a disk "bench"
// created from the filled image, the way an operator would.
func startTandemFUSE(ctx context.Context, bin, data, mnt, image string, size int64) (string, func(), error) {
	tandem := func(args ...string) error {
		cmd := exec.CommandContext(ctx, bin, append([]string{"--data", data}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("tandem %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := tandem("init", "--site", "bench"); err != nil {
		return "", nil, err
	}
	cmd, stop, err := startBackground(ctx, []string{bin, "--data", data, "serve", "--fuse", mnt}, data+".log", mnt)
	if err != nil {
		return "", nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = tandem("disk", "create", "bench", "--size", strconv.FormatInt(size>>20, 10)+"M", "--from", image)
		if err == nil || time.Now().After(deadline) || cmd.ProcessState != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("%w (daemon log: %s)", err, tail(data+".log"))
	}
	path := filepath.Join(mnt, "disks", "bench")
	if err := waitFile(ctx, path, size, cmd); err != nil {
		stop()
		return "", nil, fmt.Errorf("tandem serve --fuse: %w (daemon log: %s)", err, tail(data+".log"))
	}
	return path, stop, nil
}

// tail returns the last lines of a log file.
func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines[max(0, len(lines)-5):], " / ")
}

// fuseFio runs one fio job on a block device and returns MB/s and IOPS.
func fuseFio(ctx context.Context, dir, dev string, l fuseLine, runtime time.Duration) (float64, float64, error) {
	out := filepath.Join(dir, "fio.json")
	os.Remove(out)
	args := []string{
		"--name=" + l.rw, "--filename=" + dev, "--ioengine=libaio", "--direct=1",
		"--rw=" + l.rw, "--bs=" + l.bs, "--iodepth=16", "--numjobs=1",
		"--time_based", "--runtime=" + strconv.Itoa(int(runtime.Seconds())), "--ramp_time=1",
		"--randrepeat=0", "--norandommap", "--output-format=json", "--output=" + out,
	}
	cmd := exec.CommandContext(ctx, "fio", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("fio: %w: %s", err, b)
	}
	return readFioResult(out)
}
