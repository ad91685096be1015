package appliance

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseBytes parses a byte count such as 512, 64K, 10M, 1G or 2T (powers
// of 1024; an optional trailing "B" or "iB" is accepted).
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "iB"), "B")
	if t == "" {
		return 0, fmt.Errorf("%q: empty", s)
	}
	mult := int64(1)
	switch t[len(t)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	case 't', 'T':
		mult = 1 << 40
	}
	if mult != 1 {
		t = t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: want a positive whole number with an optional K, M, G or T suffix", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return n * mult, nil
}

// ParseSize parses a disk size (see ParseBytes); disk sizes must be a
// multiple of 512 bytes.
func ParseSize(s string) (int64, error) {
	n, err := ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("size %w", err)
	}
	if n%512 != 0 {
		return 0, fmt.Errorf("size %q: must be a multiple of 512 bytes", s)
	}
	return n, nil
}

// ParseRate parses a byte rate such as 100M, 10MB/s or 500K.
func ParseRate(s string) (int64, error) {
	n, err := ParseBytes(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	if err != nil {
		return 0, fmt.Errorf("rate %w (bytes per second)", err)
	}
	return n, nil
}

// FormatSize prints n in the largest unit that divides it exactly.
func FormatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
