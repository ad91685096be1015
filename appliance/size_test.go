package appliance_test

import (
	"testing"

	"github.com/tandem-dr/tandem/appliance"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"512", 512, true},
		{"64K", 64 << 10, true},
		{"10M", 10 << 20, true},
		{"1G", 1 << 30, true},
		{"2T", 2 << 40, true},
		{"1GiB", 1 << 30, true},
		{"4MB", 4 << 20, true},
		{"1000", 0, false}, // not a multiple of 512
		{"", 0, false},
		{"-5M", 0, false},
		{"0", 0, false},
		{"12Q", 0, false},
		{"99999999999T", 0, false},
	} {
		got, err := appliance.ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"100M", 100 << 20, true},
		{"10MB/s", 10 << 20, true},
		{"500K", 500 << 10, true},
		{"1000", 1000, true},
		{"fast", 0, false},
		{"0", 0, false},
	} {
		got, err := appliance.ParseRate(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for in, want := range map[int64]string{512: "512", 1 << 20: "1M", 3 << 30: "3G", 1536: "1536", 5 << 40: "5T"} {
		if got := appliance.FormatSize(in); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", in, got, want)
		}
	}
}
