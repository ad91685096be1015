package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fioWriteClat is a trimmed fio 3.33 report of a write job, with notes
// before the JSON as fio prints them.
const fioWriteClat = `note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "write",
      "write" : {
        "io_bytes" : 770703360,
        "bw_bytes" : 149854824,
        "iops" : 142.912697,
        "clat_ns" : {
          "min" : 1000,
          "percentile" : {
            "1.000000" : 13172736,
            "50.000000" : 86507520,
            "99.000000" : 341835776,
            "99.900000" : 421527552
          }
        }
      }
    }
  ]
}`

func TestParseReplFio(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    replFioResult
		wantErr string
	}{
		{"sample", fioWriteClat, replFioResult{
			mbs: 149.854824, iops: 142.912697, written: 770703360,
			clatP50: 86507520 * time.Nanosecond, clatP99: 341835776 * time.Nanosecond,
		}, ""},
		{"no percentiles", `{"jobs":[{"write":{"io_bytes":4096,"bw_bytes":2e6,"iops":500}}]}`,
			replFioResult{mbs: 2, iops: 500, written: 4096}, ""},
		{"absurd percentile", `{"jobs":[{"write":{"clat_ns":{"percentile":{"50.000000":1e300,"99.000000":-5}}}}]}`,
			replFioResult{}, ""},
		{"no jobs", `{"jobs":[]}`, replFioResult{}, "0 jobs"},
		{"two jobs", `{"jobs":[{},{}]}`, replFioResult{}, "2 jobs"},
		{"negative", `{"jobs":[{"write":{"io_bytes":-1}}]}`, replFioResult{}, "negative"},
		{"not json", `fio: engine nbd not loadable`, replFioResult{}, "parse fio output"},
		{"empty", ``, replFioResult{}, "parse fio output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseReplFio([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseReplFio error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseReplFio: %v", err)
			}
			if got != tt.want {
				t.Errorf("parseReplFio = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseReplFio(f *testing.F) {
	f.Add([]byte(fioWriteClat))
	f.Add([]byte(`{"jobs":[{"write":{"clat_ns":{"percentile":{"50.000000":1e300}}}}]}`))
	f.Add([]byte(`{"jobs":[{"write":{"io_bytes":-1}}]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := parseReplFio(raw)
		if err != nil {
			return
		}
		if got.mbs < 0 || got.iops < 0 || got.written < 0 || got.clatP50 < 0 || got.clatP99 < 0 {
			t.Fatalf("parseReplFio(%q) = %+v: negative figures", raw, got)
		}
	})
}

func TestPercentile(t *testing.T) {
	ten := []float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5}
	tests := []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"empty", nil, 99, 0},
		{"one", []float64{0.4}, 50, 0.4},
		{"median of ten", ten, 50, 5},
		{"p99 of ten is the max", ten, 99, 10},
		{"p90 of ten", ten, 90, 9},
		{"max", ten, 100, 10},
		{"p0 is the min", ten, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.xs, tt.p); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.xs, tt.p, got, tt.want)
			}
		})
	}
	if ten[0] != 10 {
		t.Errorf("percentile sorted its argument: %v", ten)
	}
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	if got := percentile(hundred, 99); got != 99 {
		t.Errorf("p99 of 1..100 = %v, want 99", got)
	}
}

func TestParseProcStat(t *testing.T) {
	checkParses(t, "parseProcStat", parseProcStat, []parseCase[time.Duration]{
		{"sample", "13265 (tandem) S 1 13165 21277 0 -1 4194304 101 0 0 0 250 75 0 0 20 0 14 0 1285839\n", 3250 * time.Millisecond, ""},
		{"name with spaces and parens", "7 (a) b (c) R 1 1 1 0 -1 0 0 0 0 0 1 2 0 0\n", 30 * time.Millisecond, ""},
		{"no name", "7 a R 1 1 1 0 -1 0 0 0 0 0 1 2\n", 0, "no command name"},
		{"short", "7 (a) R 1 1 1\n", 0, "fields"},
		{"not a number", "7 (a) R 1 1 1 0 -1 0 0 0 0 0 x 2 0\n", 0, "CPU time"},
		{"negative", "7 (a) R 1 1 1 0 -1 0 0 0 0 0 -1 2 0\n", 0, "CPU time"},
		{"overflow", "7 (a) R 1 1 1 0 -1 0 0 0 0 0 99999999999999999 2 0\n", 0, "CPU time"},
		{"empty", "", 0, "no command name"},
	})
}

func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte("13265 (tandem) S 1 13165 21277 0 -1 4194304 101 0 0 0 250 75 0 0 20 0 14 0 1285839\n"))
	f.Add([]byte("7 (a) b (c) R 1 1 1 0 -1 0 0 0 0 0 1 2 0 0\n"))
	f.Add([]byte("7 (a) R 1 1 1 0 -1 0 0 0 0 0 99999999999999999 2 0\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := parseProcStat(raw)
		if err == nil && got < 0 {
			t.Fatalf("parseProcStat(%q) = %v: negative", raw, got)
		}
	})
}

func TestParseMachineStat(t *testing.T) {
	checkParses(t, "parseMachineStat", parseMachineStat, []parseCase[machineCPU]{
		{"sample", "cpu  100 2 30 400 5 6 7 50 0 0\ncpu0 50 1 15 200 2 3 3 25 0 0\n", machineCPU{total: 600, steal: 50}, ""},
		{"no guest fields", "cpu 1 1 1 1 1 1 1 3\n", machineCPU{total: 10, steal: 3}, ""},
		{"per-CPU line first", "cpu0 1 1 1 1 1 1 1 1\n", machineCPU{}, "first line"},
		{"short", "cpu 1 2 3\n", machineCPU{}, "first line"},
		{"not a number", "cpu 1 2 3 4 5 6 7 x\n", machineCPU{}, "CPU time"},
		{"negative", "cpu 1 2 3 4 5 6 7 -8\n", machineCPU{}, "CPU time"},
		{"overflow", "cpu 1 2 3 4 5 6 7 18446744073709551615\n", machineCPU{}, "CPU time"},
		{"empty", "", machineCPU{}, "first line"},
	})
}

func FuzzParseMachineStat(f *testing.F) {
	f.Add([]byte("cpu  100 2 30 400 5 6 7 50 0 0\n"))
	f.Add([]byte("cpu 1 2 3 4 5 6 7 18446744073709551615\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := parseMachineStat(raw)
		if err == nil && got.steal > got.total {
			t.Fatalf("parseMachineStat(%q) = %+v: more stolen than in all", raw, got)
		}
	})
}

// TestStealShare: the share stolen between two readings, and none when the
// counters did not move forward.
func TestStealShare(t *testing.T) {
	mark := machineCPU{total: 1000, steal: 100}
	for _, tt := range []struct {
		now  machineCPU
		want float64
	}{
		{machineCPU{total: 1400, steal: 200}, 0.25},
		{machineCPU{total: 1400, steal: 100}, 0},
		{mark, 0},
		{machineCPU{total: 900, steal: 150}, 0},
		{machineCPU{total: 1400, steal: 50}, 0},
	} {
		if got := tt.now.stealShare(mark); got != tt.want {
			t.Errorf("%+v.stealShare(%+v) = %v, want %v", tt.now, mark, got, tt.want)
		}
	}
}

// TestHeldRate: the rate both sites held the writes counts the drain.
func TestHeldRate(t *testing.T) {
	r := replRun{fio: replFioResult{mbs: 1000, written: 4e9}, drain: 4 * time.Second}
	if got := r.heldRate(); got < 499.9 || got > 500.1 {
		t.Errorf("4 GB in a 4 s run and a 4 s drain: %.1f MB/s, want 500", got)
	}
	r.drain = 0
	if got := r.heldRate(); got < 999.9 || got > 1000.1 {
		t.Errorf("no drain: %.1f MB/s, want fio's 1000", got)
	}
	if got := (replRun{}).heldRate(); got != 0 {
		t.Errorf("no run: %.1f, want 0", got)
	}
}

// TestLogMentions checks how a run is found to have filled its journal:
// the daemon's warning names the disk, and another disk's warning (even
// one whose name extends this one's) does not count.
func TestLogMentions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serve.log")
	log := `time=2026-11-26T15:37:03.073Z level=INFO msg="disk created" site=alpha disk=bench1-async
time=2026-11-26T15:37:04.073Z level=WARN msg="journal full: tracking dirty regions, disk needs resync" site=alpha disk=bench3-async
time=2026-11-26T15:37:03.073Z level=WARN msg="journal full: tracking dirty regions, disk needs resync" site=alpha disk=bench12-async journal_bytes=4294139850
`
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		disk string
		want bool
	}{{"bench12-async", true}, {"bench3-async", true}, {"bench1-async", false}, {"bench2-async", false}} {
		got, err := logMentions(path, journalFullLog, "disk="+tc.disk+" ")
		if err != nil || got != tc.want {
			t.Errorf("logMentions(%s) = %v, %v; want %v", tc.disk, got, err, tc.want)
		}
	}
	if _, err := logMentions(filepath.Join(t.TempDir(), "none.log"), "x"); err == nil {
		t.Error("logMentions of a missing log: no error")
	}
}

// TestBetterRun checks which run a line keeps: one whose journal kept
// every record beats a faster one whose journal filled.
func TestBetterRun(t *testing.T) {
	run := func(iops float64, overflowed bool) replRun {
		return replRun{fio: replFioResult{iops: iops}, overflowed: overflowed}
	}
	for _, tc := range []struct {
		a, b replRun
		want bool
	}{
		{run(10, false), replRun{}, true},
		{run(10, true), replRun{}, true},
		{run(10, false), run(20, true), true},
		{run(20, true), run(10, false), false},
		{run(20, false), run(10, false), true},
		{run(10, true), run(20, true), false},
	} {
		if got := better(tc.a, tc.b); got != tc.want {
			t.Errorf("better(%+v, %+v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// diskstatsSample is two lines of /proc/diskstats (kernel 6.x: 20 fields),
// a whole disk and its partition.
const diskstatsSample = ` 253       0 vda 1000 20 80000 500 2000 30 409600 900 0 1200 1400 0 0 0 0 10 5
 253       1 vda1 900 20 70000 400 1900 30 409000 800 0 1100 1200 0 0 0 0 0 0
`

func TestParseDiskstats(t *testing.T) {
	dev := func(major, minor uint32) func([]byte) (uint64, error) {
		return func(b []byte) (uint64, error) { return parseDiskstats(b, major, minor) }
	}
	checkParses(t, "parseDiskstats 253:0", dev(253, 0), []parseCase[uint64]{
		{"whole disk", diskstatsSample, 409600 * 512, ""},
		{"old kernel, 14 fields", " 253 0 vda 1 2 3 4 5 6 7 8 9 10 11\n", 7 * 512, ""},
		{"missing", "   8  0 sda 1 2 3 4 5 6 7 8 9 10 11\n  253 1 vda1 1 2 3 4 5 6 7 8 9 10 11\n", 0, "no such device"},
		{"short line", " 253 0 vda 1 2 3\n", 0, "at least 10 fields"},
		{"not a number", " 253 0 vda 1 2 3 4 5 6 x 8 9 10 11\n", 0, "sectors written"},
		{"overflow", " 253 0 vda 1 2 3 4 5 6 18446744073709551615 8 9 10 11\n", 0, "sectors written"},
		{"empty", "", 0, "no such device"},
	})
	checkParses(t, "parseDiskstats 253:1", dev(253, 1), []parseCase[uint64]{
		{"partition", diskstatsSample, 409000 * 512, ""},
	})
}

func FuzzParseDiskstats(f *testing.F) {
	f.Add([]byte(diskstatsSample), uint32(253), uint32(0))
	f.Add([]byte(" 253 0 vda 1 2 3\n"), uint32(253), uint32(0))
	f.Fuzz(func(t *testing.T, raw []byte, major, minor uint32) {
		n, err := parseDiskstats(raw, major, minor)
		if err == nil && n%512 != 0 {
			t.Fatalf("parseDiskstats(%q, %d, %d) = %d, not whole sectors", raw, major, minor, n)
		}
	})
}

// TestDevMeter: the meter finds the device under a directory and sees the
// writes of a synced file there (the tests run on a block device here).
func TestDevMeter(t *testing.T) {
	dir := t.TempDir()
	m, err := newDevMeter(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !m.known {
		t.Fatalf("no /proc/diskstats line for the device %d:%d under %s", m.major, m.minor, dir)
	}
	mark, err := m.sample()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "written"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 8<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	now, err := m.sample()
	if err != nil {
		t.Fatal(err)
	}
	if rate := now.rateSince(mark); rate <= 0 {
		t.Fatalf("device rate after writing and syncing 8 MiB = %v MB/s, want above 0", rate)
	}
}

// TestDevRateSince: a rate only between two known samples that moved
// forward.
func TestDevRateSince(t *testing.T) {
	t0 := time.Unix(100, 0)
	mark := devSample{written: 1e6, at: t0, ok: true}
	for _, tt := range []struct {
		now  devSample
		want float64
	}{
		{devSample{written: 5e6, at: t0.Add(2 * time.Second), ok: true}, 2},
		{devSample{written: 1e6, at: t0.Add(time.Second), ok: true}, 0},
		{devSample{written: 5e6, at: t0.Add(time.Second)}, -1},
		{devSample{written: 5e5, at: t0.Add(time.Second), ok: true}, -1},
		{devSample{written: 5e6, at: t0, ok: true}, -1},
	} {
		if got := tt.now.rateSince(mark); got != tt.want {
			t.Errorf("%+v.rateSince(%+v) = %v, want %v", tt.now, mark, got, tt.want)
		}
	}
}

func TestDurableRate(t *testing.T) {
	dir := t.TempDir()
	mbs, err := durableRate(t.Context(), dir, 4*durableChunk, 100*time.Millisecond)
	if err != nil {
		t.Fatalf("durableRate on %s: %v", dir, err)
	}
	if mbs <= 0 {
		t.Errorf("durableRate = %.1f MB/s, want a rate", mbs)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("probe left %d files in %s", len(left), dir)
	}
}

func TestMbsList(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want string
	}{
		{[]float64{250.4}, "250 MB/s"},
		{[]float64{250, 261.6}, "250 and 262 MB/s"},
		{[]float64{1, 2, 3}, "1, 2 and 3 MB/s"},
	} {
		if got := mbsList(c.in); got != c.want {
			t.Errorf("mbsList(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestRoundRatios(t *testing.T) {
	runs := func(iops ...float64) []replRun {
		rs := make([]replRun, len(iops))
		for i, x := range iops {
			rs[i].fio.iops = x
		}
		return rs
	}
	// The reference's fast outlier in round 1 makes the best runs' ratio
	// 60/100; the rounds' ratios are 0.6, 0.8 and 0.8125.
	on, off := runs(60, 48, 52), runs(100, 60, 64)
	got := roundRatios(on, off)
	want := []float64{0.6, 0.8, 0.8125}
	if !slices.Equal(got, want) {
		t.Fatalf("roundRatios = %v, want %v", got, want)
	}
	if m := percentile(got, 50); m != 0.8 {
		t.Errorf("median of %v = %v, want 0.8", got, m)
	}
	// A round missing on one side, or with a reference that measured
	// nothing, is left out rather than counted as 0 or infinity.
	if got := roundRatios(runs(60, 50, 70), runs(100, 0)); !slices.Equal(got, []float64{0.6}) {
		t.Errorf("roundRatios with a missing round and a zero reference = %v, want [0.6]", got)
	}
	if got := ratioList([]float64{0.614, 0.5}); got != "0.61x 0.50x" {
		t.Errorf("ratioList = %q", got)
	}
}
