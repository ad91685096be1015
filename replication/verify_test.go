package replication_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tandem-dr/tandem/replication"
	"github.com/tandem-dr/tandem/replication/replicationtest"
)

func TestVerify(t *testing.T) {
	src, sink, _, _, s := startPair(t, nil)
	stop := make(chan struct{})
	wg := load(src, 1, stop, 20*time.Microsecond)
	time.Sleep(300 * time.Millisecond)
	waitProtected(t, s)
	ctx := context.Background()

	// Under a write load, nothing differs.
	rep, err := s.Verify(ctx, replication.VerifyOptions{RegionSize: 256 << 10})
	if err != nil {
		t.Fatalf("Verify under load: %v", err)
	}
	if len(rep.Differ) != 0 || rep.Regions != diskSize/(256<<10) {
		t.Errorf("Verify under load: %d regions, differ %v; want %d regions, none differing", rep.Regions, rep.Differ, diskSize/(256<<10))
	}
	if !rep.ChainChecked || rep.ChainError != "" || rep.ChainThrough == 0 {
		t.Errorf("chain check: checked %v through %d error %q; want checked, sound", rep.ChainChecked, rep.ChainThrough, rep.ChainError)
	}
	close(stop)
	wg.Wait()
	waitSynced(t, s, src, sink, 10*time.Second)

	// A damaged replica is found, region by region.
	sink.Corrupt(5<<20 + 17)
	rep, err = s.Verify(ctx, replication.VerifyOptions{RegionSize: 1 << 20})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	want := replication.Region{Off: 5 << 20, Len: 1 << 20}
	if len(rep.Differ) != 1 || rep.Differ[0] != want || rep.OK() {
		t.Errorf("Verify of a damaged replica: differ %v, OK %v; want [%v], not OK", rep.Differ, rep.OK(), want)
	}
}

func TestVerifyNotConnected(t *testing.T) {
	src := replicationtest.NewMemSource(diskSize, 0)
	d := newDialer("127.0.0.1:1")
	d.failing.Store(true)
	s, _ := startSender(t, src, d.dial, nil)
	if _, err := s.Verify(context.Background(), replication.VerifyOptions{}); !errors.Is(err, replication.ErrNotProtected) {
		t.Errorf("Verify with the secondary away = %v; want ErrNotProtected", err)
	}
}

func waitProtected(t *testing.T, s *replication.Sender) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.Status(context.Background())
		if st.State == replication.StateProtected && st.Connected {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not protected: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
