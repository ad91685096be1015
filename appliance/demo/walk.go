package demo

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// walk is the story the demo tells, one step at a time.
func (r *runner) walk() error {
	primary, err := r.newSite("primary")
	if err != nil {
		return err
	}

	r.title("Start the primary appliance")
	if err := r.startSite(primary); err != nil {
		return err
	}

	r.title("Create a protected disk (sparse, 1 GiB)")
	if _, err := r.tandem(primary, "disk", "create", "vol1", "--size", "1G"); err != nil {
		return err
	}
	if _, err := r.tandem(primary, "disk", "list"); err != nil {
		return err
	}

	r.title("A host writes through NBD (qemu-io): 4 MiB at 0, 1 MiB at 512 MiB, then flushes")
	if _, err := r.run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 4M", "-c", "write -P 0xcd 512M 1M", "-c", "flush", primary.uri("vol1")); err != nil {
		return err
	}

	r.title("Read it back and check every byte")
	if _, err := r.run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0xab 0 4M", "-c", "read -P 0xcd 512M 1M", "-c", "read -P 0 4M 508M", primary.uri("vol1")); err != nil {
		return err
	}

	r.title("The allocation map: data where it was written, holes elsewhere (nbdinfo --map)")
	out, err := r.run("nbdinfo", "--map", primary.uri("vol1"))
	if err != nil {
		return err
	}
	if !strings.Contains(out, "data") || !strings.Contains(out, "hole") {
		return fmt.Errorf("map shows no data and hole extents")
	}

	r.title("Every write is in the journal")
	if _, err := r.tandem(primary, "status"); err != nil {
		return err
	}

	r.title("kill -9 the appliance mid-life, start it again: flushed writes survive")
	r.stopSite(primary, true)
	r.say("primary killed")
	if err := r.startSite(primary); err != nil {
		return err
	}
	if _, err := r.run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0xab 0 4M", "-c", "read -P 0xcd 512M 1M", primary.uri("vol1")); err != nil {
		return err
	}

	if err := r.replicate(primary); err != nil {
		return err
	}
	fmt.Fprintf(r.w, "\ndemo complete: every step checked.\n")
	return nil
}

// replicate is the second site's part of the story: pairing, protection,
// continuous shipping, a dropped secondary, and verification.
func (r *runner) replicate(primary *site) error {
	secondary, err := r.newSite("secondary")
	if err != nil {
		return err
	}
	r.title("Start the secondary appliance")
	if err := r.startSite(secondary); err != nil {
		return err
	}

	r.title("Pair the sites: a one-time token from the secondary, used on the primary")
	token, err := r.tandem(secondary, "pair", "token")
	if err != nil {
		return err
	}
	if _, err := r.tandem(primary, "pair", "add", firstLine(token)); err != nil {
		return err
	}
	if _, err := r.tandem(primary, "pair", "list"); err != nil {
		return err
	}

	r.title("Protect vol1: initial sync of the allocated regions, then continuous deltas")
	if _, err := r.tandem(primary, "protect", "vol1", "--peer", "secondary"); err != nil {
		return err
	}
	if err := r.waitProtected(primary, "vol1"); err != nil {
		return err
	}
	if _, err := r.tandem(primary, "status"); err != nil {
		return err
	}
	if _, err := r.tandem(secondary, "status"); err != nil {
		return err
	}
	r.say("the replica keeps the primary's retention window (--retention, 24h by default)")
	info, err := r.tandem(secondary, "disk", "info", "vol1")
	if err != nil {
		return err
	}
	if !strings.Contains(info, "24h0m0s (the primary's policy)") {
		return fmt.Errorf("the replica's disk info does not show the primary's retention:\n%s", info)
	}

	r.title("The replica's newest point equals the primary (qemu-img compare)")
	if _, err := r.run("qemu-img", "compare", "-f", "raw", "-F", "raw", primary.uri("vol1"), secondary.uri("vol1@latest")); err != nil {
		return err
	}

	r.title("Writes go on while the secondary is down; it catches up when it is back")
	r.stopSite(secondary, true)
	r.say("secondary killed")
	if _, err := r.run("qemu-io", "-f", "raw", "-c", "write -P 0x99 100M 8M", "-c", "flush", primary.uri("vol1")); err != nil {
		return err
	}
	if _, err := r.tandem(primary, "status", "vol1"); err != nil {
		return err
	}
	if err := r.startSite(secondary); err != nil {
		return err
	}
	if err := r.waitProtected(primary, "vol1"); err != nil {
		return err
	}
	if _, err := r.run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x99 100M 8M", secondary.uri("vol1@latest")); err != nil {
		return err
	}

	r.title("Verify: the replica's journal chain, and primary against replica region by region (digests only)")
	if _, err := r.tandem(primary, "verify", "vol1"); err != nil {
		return err
	}
	return r.checkpoints(primary, secondary)
}

// checkpoints shows automatic checkpoints: two disks of one consistency
// group, cut together every second, their markers shipped to the replicas.
func (r *runner) checkpoints(primary, secondary *site) error {
	r.title("Automatic checkpoints: db and logs in group app, cut together every second (--checkpoint-every 1s)")
	for _, name := range []string{"db", "logs"} {
		if _, err := r.tandem(primary, "disk", "create", name, "--size", "64M"); err != nil {
			return err
		}
		if _, err := r.tandem(primary, "protect", name, "--peer", "secondary", "--group", "app", "--checkpoint-every", "1s"); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := r.quiet(secondary, "status", "--json")
		if err != nil {
			return err
		}
		var st []struct {
			Name       string `json:"name"`
			Checkpoint *struct {
				Seq   uint64 `json:"seq"`
				Label string `json:"label"`
			} `json:"checkpoint"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return fmt.Errorf("status --json: %w", err)
		}
		labels := map[string]string{}
		for _, d := range st {
			if d.Checkpoint != nil {
				labels[d.Name] = d.Checkpoint.Label
			}
		}
		if l := labels["db"]; l != "" && l == labels["logs"] {
			r.say("both replicas hold the group's checkpoint %q", l)
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the replicas of db and logs hold no common checkpoint after a minute: %v", labels)
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, err := r.tandem(secondary, "status")
	return err
}

// waitProtected waits until the secondary holds every record of a disk.
func (r *runner) waitProtected(s *site, disk string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		out, err := r.quiet(s, "status", disk, "--json")
		if err == nil {
			var st []struct {
				State     string `json:"state"`
				Connected bool   `json:"connected"`
				Newest    uint64 `json:"newest_point"`
				Acked     uint64 `json:"acked_point"`
				LagBytes  int64  `json:"lag_bytes"`
			}
			if json.Unmarshal([]byte(out), &st) == nil && len(st) == 1 &&
				st[0].State == "protected" && st[0].Connected && st[0].Acked >= st[0].Newest && st[0].LagBytes == 0 {
				r.say("caught up: the secondary holds point %d", st[0].Acked)
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s: replica did not catch up in 2 minutes", disk)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}
