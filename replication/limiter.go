package replication

import (
	"context"
	"time"
)

// limiter is a token bucket over bytes: wait blocks until n bytes may be
// sent at rate bytes per second, allowing bursts of up to burst bytes
// after an idle spell. A nil limiter never waits. It is used by one
// goroutine at a time.
type limiter struct {
	rate   float64 // bytes per second
	burst  float64
	tokens float64
	last   time.Time
}

func newLimiter(rate int64) *limiter {
	if rate <= 0 {
		return nil
	}
	burst := float64(rate) / 10 // a tenth of a second
	if burst < 256<<10 {
		burst = 256 << 10
	}
	return &limiter{rate: float64(rate), burst: burst, tokens: burst, last: time.Now()}
}

// wait takes n tokens, sleeping first until the bucket holds them, so a
// frame leaves only once the rate allows all of it.
func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil {
		return nil
	}
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if need := float64(n) - l.tokens; need > 0 {
		d := time.Duration(need / l.rate * float64(time.Second))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		l.tokens = float64(n)
		l.last = time.Now()
	}
	l.tokens -= float64(n)
	return nil
}
