package tests

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/tandem-dr/tandem"

// TestImportBoundaries keeps the layers true as the code grows: the
// protocol and presentation packages know nothing of the project but the
// internal/ helpers (which know nothing of it either), only the journal
// talks to badger, and nothing below the daemon imports it.
func TestImportBoundaries(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	type pkg struct {
		ImportPath string
		Imports    []string
	}
	pkgs := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs[strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")] = p.Imports
	}
	// Packages that may import nothing of the project.
	leaf := []string{"nbd", "fusefs", "attach", "pki", "journal"}
	// Packages allowed to import badger.
	badgerOK := map[string]bool{"journal": true}
	for name, imports := range pkgs {
		for _, imp := range imports {
			if strings.HasPrefix(imp, "github.com/dgraph-io/badger") && !badgerOK[name] {
				t.Errorf("%s imports badger: only journal may", name)
			}
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			dep := strings.TrimPrefix(imp, module+"/")
			for _, l := range leaf {
				if name == l && !strings.HasPrefix(dep, l+"/") && !strings.HasPrefix(dep, "internal/") {
					t.Errorf("%s imports %s: it must know nothing of the project", name, dep)
				}
			}
			if strings.HasPrefix(name, "internal/") && !strings.HasPrefix(dep, "internal/") {
				t.Errorf("%s imports %s: an internal helper must know nothing of the project", name, dep)
			}
			if strings.HasPrefix(dep, "appliance") && !strings.HasPrefix(name, "cmd/") && !strings.HasPrefix(name, "appliance") && !strings.HasPrefix(name, "tests") {
				t.Errorf("%s imports %s: only cmd may import the daemon", name, dep)
			}
			if strings.HasPrefix(dep, "cmd") {
				t.Errorf("%s imports %s", name, dep)
			}
		}
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages, want the whole module", len(pkgs))
	}
}
