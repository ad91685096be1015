package main

// The bench is a command, so its tests live in package main: a command's
// functions cannot be imported by an external _test package.

import (
	"math"
	"strings"
	"testing"
)

const procStatusSample = `Name:	tandem
Umask:	0022
State:	S (sleeping)
VmPeak:	 2316024 kB
VmSize:	 2316024 kB
VmHWM:	 1470764 kB
VmRSS:	 1470332 kB
RssAnon:	   43012 kB
RssFile:	 1427320 kB
RssShmem:	       0 kB
Threads:	14
`

func TestParseProcStatus(t *testing.T) {
	checkParses(t, "parseProcStatus", parseProcStatus, []parseCase[procMemory]{
		{"sample", procStatusSample, procMemory{HWM: 1470764 << 10, RSS: 1470332 << 10, Anon: 43012 << 10, File: 1427320 << 10}, ""},
		{"only peak", "VmHWM:\t12 kB\n", procMemory{HWM: 12 << 10}, ""},
		{"no peak", "VmRSS:\t12 kB\n", procMemory{}, "no VmHWM"},
		{"bad unit", "VmHWM:\t12 MB\n", procMemory{}, "VmHWM"},
		{"bad number", "VmHWM:\t1x2 kB\n", procMemory{}, "VmHWM"},
		{"empty", "", procMemory{}, "no VmHWM"},
	})
}

// parseCase is one case of a parser's table test: its input and the
// result it should give, or a part of the error it should return.
type parseCase[T comparable] struct {
	name    string
	in      string
	want    T
	wantErr string
}

// checkParses runs parse, named name, over the cases.
func checkParses[T comparable](t *testing.T, name string, parse func([]byte) (T, error), cases []parseCase[T]) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("%s error = %v, want one containing %q", name, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got != tt.want {
				t.Errorf("%s = %+v, want %+v", name, got, tt.want)
			}
		})
	}
}

// fioWriteSync is a trimmed fio 3.33 report of a write job with fsync=1.
const fioWriteSync = `{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "randwrite",
      "read" : {"io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.000000, "lat_ns" : {"min" : 0, "max" : 0, "mean" : 0.000000}},
      "write" : {"io_bytes" : 5615616, "bw_bytes" : 2806400, "iops" : 685.156250, "lat_ns" : {"min" : 180000, "max" : 900000, "mean" : 400000.000000}},
      "sync" : {"total_ios" : 1371, "lat_ns" : {"min" : 500000, "max" : 9000000, "mean" : 1000000.000000}}
    }
  ]
}`

// fioRead is a trimmed report of a read job, after a note fio printed.
const fioRead = `note: both iodepth >= 1 and synchronous I/O engine are selected
{"jobs" : [{"read" : {"bw_bytes" : 3000000000, "iops" : 2861.0, "lat_ns" : {"mean" : 5500000.0}},
            "write" : {"bw_bytes" : 0, "iops" : 0, "lat_ns" : {"mean" : 0}}}]}`

func TestParseAppFio(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    appResult
		wantErr string
	}{
		{"write with flushes", fioWriteSync, appResult{mbs: 2.8064, iops: 685.15625, latUS: 1400}, ""},
		{"read after a note", fioRead, appResult{mbs: 3000, iops: 2861, latUS: 5500}, ""},
		{"no jobs", `{"jobs": []}`, appResult{}, "no jobs"},
		{"not json", `fio: engine nbd not loadable`, appResult{}, "parse fio output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAppFio([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseAppFio error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseAppFio: %v", err)
			}
			near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }
			if !near(got.mbs, tt.want.mbs) || !near(got.iops, tt.want.iops) || !near(got.latUS, tt.want.latUS) {
				t.Errorf("parseAppFio = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseProcStatus(f *testing.F) {
	f.Add([]byte(procStatusSample))
	f.Add([]byte("VmHWM:\t12 kB\n"))
	f.Add([]byte("VmHWM:\t12 MB\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseProcStatus(b)
		if err == nil && m.HWM == 0 {
			t.Fatalf("parseProcStatus(%q) = %+v without error, want a peak", b, m)
		}
	})
}

func FuzzParseAppFio(f *testing.F) {
	f.Add([]byte(fioWriteSync))
	f.Add([]byte(fioRead))
	f.Add([]byte(`{"jobs": []}`))
	f.Add([]byte(`{"jobs": [{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseAppFio(b)
		if err != nil && r != (appResult{}) {
			t.Fatalf("parseAppFio(%q) = %+v with error %v, want a zero result", b, r, err)
		}
	})
}
