package fusefs

import (
	"fmt"
	"os/exec"
	"strings"
)

// fusermountLazy detaches the mount at dir with fusermount3 -uz (or the
// older fusermount), for callers that may not unmount themselves.
func fusermountLazy(dir string) error {
	var last error
	for _, prog := range []string{"fusermount3", "fusermount"} {
		path, err := exec.LookPath(prog)
		if err != nil {
			last = err
			continue
		}
		out, err := exec.Command(path, "-u", "-z", dir).CombinedOutput()
		if err == nil {
			return nil
		}
		last = fmt.Errorf("%s -uz: %w: %s", prog, err, strings.TrimSpace(string(out)))
	}
	return last
}
