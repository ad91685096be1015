package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// nbdServer is one peer under test: how to start it on a unix socket.
type nbdServer struct {
	name string
	argv func(sock, file string) []string
}

// nbdLine is one row of the NBD table: a fio workload.
type nbdLine struct {
	name  string
	rw    string
	bs    string
	depth int
}

// benchNBD serves the same file with nbdkit's file plugin, qemu-nbd and
// tandem nbd serve, and drives each with fio's nbd engine (libnbd) over a
// unix socket: sequential 1 MiB and random 4 KiB reads and writes at queue
// depth 16. It prints MB/s, IOPS and tandem's ratio to the faster peer.
func benchNBD(ctx context.Context, env *benchEnv) error {
	for _, tool := range []string{"fio", "nbdkit", "qemu-nbd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("nbd bench needs %s (make deps): %w", tool, err)
		}
	}
	size := int64(1 << 30)
	runtime := 4 * time.Second
	if env.Short {
		size, runtime = 256<<20, 3*time.Second
	}
	file := filepath.Join(env.WorkDir, "nbd-bench.img")
	if err := fillFile(file, size); err != nil {
		return err
	}
	servers := []nbdServer{
		{"nbdkit", func(sock, file string) []string {
			return []string{"nbdkit", "--foreground", "--unix", sock, "file", "file=" + file}
		}},
		{"qemu-nbd", func(sock, file string) []string {
			return []string{"qemu-nbd", "--format=raw", "--socket=" + sock, "--shared=16", "--persistent",
				"--cache=writeback", "--aio=threads", "--discard=unmap", file}
		}},
		{"tandem", func(sock, file string) []string {
			return []string{env.Bin, "nbd", "serve", "--socket", sock, file}
		}},
	}
	lines := []nbdLine{
		{"seq read 1M", "read", "1m", 16},
		{"seq write 1M", "write", "1m", 16},
		{"rand read 4K", "randread", "4k", 16},
		{"rand write 4K", "randwrite", "4k", 16},
	}
	type result struct{ mbs, iops float64 }
	res := map[string]map[string]result{}
	// All three serve at once; each line runs against each server in turn,
	// rounds times, and the best run counts, so a noisy neighbour on a
	// shared machine penalises every server alike.
	socks := map[string]string{}
	for _, srv := range servers {
		res[srv.name] = map[string]result{}
		sock := filepath.Join(env.WorkDir, srv.name+".sock")
		os.Remove(sock)
		argv := srv.argv(sock, file)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", srv.name, err)
		}
		defer stopProc(cmd)
		if err := waitUnix(ctx, sock); err != nil {
			return fmt.Errorf("%s: %w", srv.name, err)
		}
		socks[srv.name] = sock
	}
	rounds := 3
	if env.Short {
		rounds = 1
	}
	for _, l := range lines {
		for r := 0; r < rounds; r++ {
			for k := range servers {
				srv := servers[(k+r)%len(servers)] // rotate who runs first
				mbs, iops, err := runFio(ctx, env.WorkDir, socks[srv.name], l, size, runtime)
				if err != nil {
					return fmt.Errorf("%s %s: %w", srv.name, l.name, err)
				}
				if iops > res[srv.name][l.name].iops {
					res[srv.name][l.name] = result{mbs, iops}
				}
			}
		}
	}

	fmt.Printf("fio nbd engine, unix socket, %d MiB file, best of %d runs of %v per line\n", size>>20, rounds, runtime)
	fmt.Printf("%-14s %5s | %16s | %16s | %16s | %6s\n", "workload", "QD", "nbdkit MB/s IOPS", "qemu-nbd MB/s IOPS", "tandem MB/s IOPS", "ratio")
	worst := 1e9
	for _, l := range lines {
		k, q, t := res["nbdkit"][l.name], res["qemu-nbd"][l.name], res["tandem"][l.name]
		best := max(k.iops, q.iops)
		ratio := 0.0
		if best > 0 {
			ratio = t.iops / best
		}
		worst = min(worst, ratio)
		fmt.Printf("%-14s %5d | %7.0f %8.0f | %7.0f %8.0f | %7.0f %8.0f | %5.2fx\n",
			l.name, l.depth, k.mbs, k.iops, q.mbs, q.iops, t.mbs, t.iops, ratio)
	}
	fmt.Printf("worst ratio to the faster peer: %.2fx (target >= 1.00x)\n", worst)
	return nil
}

// fillFile writes size bytes of non-zero data, so reads are of data, not holes.
func fillFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create bench file: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("fill bench file: %w", err)
		}
	}
	return f.Sync()
}

func waitUnix(ctx context.Context, sock string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return errors.New("server did not listen within 20s")
}

// runFio runs one fio job against sock and returns MB/s and IOPS.
func runFio(ctx context.Context, dir, sock string, l nbdLine, size int64, runtime time.Duration) (float64, float64, error) {
	out := filepath.Join(dir, "fio.json")
	os.Remove(out)
	args := []string{
		"--name=" + l.rw, "--ioengine=nbd", "--uri=nbd+unix:///?socket=" + sock,
		"--rw=" + l.rw, "--bs=" + l.bs, "--iodepth=" + strconv.Itoa(l.depth),
		"--size=" + strconv.FormatInt(size, 10), "--time_based", "--runtime=" + strconv.Itoa(int(runtime.Seconds())),
		"--ramp_time=1", "--numjobs=1", "--randrepeat=0", "--norandommap",
		"--output-format=json", "--output=" + out,
	}
	cmd := exec.CommandContext(ctx, "fio", args...)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	if b, err := cmd.CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("fio: %w: %s", err, b)
	}
	return readFioResult(out)
}

// readFioResult reads fio's JSON report at path and returns the first
// job's MB/s and IOPS, reads and writes added.
func readFioResult(path string) (float64, float64, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("fio output: %w", err)
	}
	var rep struct {
		Jobs []struct {
			Read  fioDir `json:"read"`
			Write fioDir `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		return 0, 0, fmt.Errorf("parse fio output: %w", err)
	}
	if len(rep.Jobs) == 0 {
		return 0, 0, errors.New("fio reported no jobs")
	}
	j := rep.Jobs[0]
	bw, iops := j.Read.BwBytes+j.Write.BwBytes, j.Read.Iops+j.Write.Iops
	return bw / 1e6, iops, nil
}

// fioDir is one direction of a fio job's report.
type fioDir struct {
	BwBytes float64 `json:"bw_bytes"`
	Iops    float64 `json:"iops"`
}

// stopProc ends a server with SIGTERM, then SIGKILL to its group.
func stopProc(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}
