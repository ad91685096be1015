package journal

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// formatCount is a value that counts how often it is formatted.
type formatCount struct{ n *int }

func (c formatCount) String() string { *c.n++; return "x" }

// TestBadgerLoggerFormatsOnlyEnabled: badger's Debug and Info go to slog's
// Debug and are not even formatted when it is off (badger logs at Debug on
// every write batch); Warning and Error go out at their levels.
func TestBadgerLoggerFormatsOnlyEnabled(t *testing.T) {
	var out bytes.Buffer
	l := badgerLogger{slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	n := 0
	l.Debugf("writeRequests %v", formatCount{&n})
	l.Infof("open %v", formatCount{&n})
	if n != 0 || out.Len() != 0 {
		t.Fatalf("Debug and Info with the level at Info: formatted %d times, logged %q; want neither", n, out.String())
	}
	l.Warningf("slow %v", formatCount{&n})
	l.Errorf("broken %v", formatCount{&n})
	for _, want := range []string{`level=WARN msg="badger: slow x"`, `level=ERROR msg="badger: broken x"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log %q lacks %q", out.String(), want)
		}
	}

	out.Reset()
	l = badgerLogger{slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.Infof("open %v", formatCount{&n})
	if !strings.Contains(out.String(), `level=DEBUG msg="badger: open x"`) {
		t.Errorf("Info with the level at Debug logged %q, want it at DEBUG", out.String())
	}
}
