package journal_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/tandem-dr/tandem/journal"
)

// A disk's log: append writes (group-committed), sync them, read them
// back from a sequence number with the chain verified, and release what
// the store holds durably.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "journal-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	s, err := journal.Open(ctx, dir, journal.Options{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	l, err := s.Log("disk0")
	if err != nil {
		log.Fatal(err)
	}

	for i, word := range []string{"alpha", "beta", "gamma"} {
		p, err := l.Append(ctx, journal.Record{Kind: journal.KindWrite, Off: int64(i) * 4096, Len: int64(len(word)), Data: []byte(word)})
		if err != nil {
			log.Fatal(err)
		}
		if err := p.Wait(ctx); err != nil { // committed: survives kill -9
			log.Fatal(err)
		}
	}
	if err := l.Sync(ctx); err != nil { // synced: survives a power cut
		log.Fatal(err)
	}

	err = l.ReadFrom(ctx, 2, func(r journal.Record) error {
		fmt.Printf("seq %d: write %q at %d\n", r.Seq, r.Data, r.Off)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	// The store now holds records up to 2 durably: release them.
	if err := l.SetHold("apply", 2); err != nil {
		log.Fatal(err)
	}
	base, _ := l.Base()
	fmt.Printf("head %d, released up to %d, %d bytes kept\n", l.Head(), base, l.Bytes())
	// Output:
	// seq 2: write "beta" at 4096
	// seq 3: write "gamma" at 8192
	// head 3, released up to 2, 59 bytes kept
}
