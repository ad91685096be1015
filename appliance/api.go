package appliance

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"strings"

	"github.com/tandem-dr/tandem/replication"
)

// The API routes, all JSON:
//
//	GET    /v1/site              the site: name, data directory
//	GET    /v1/disks             every disk (DiskInfo)
//	POST   /v1/disks             create a disk (CreateOptions) → DiskInfo
//	GET    /v1/disks/{name}      one disk
//	DELETE /v1/disks/{name}      remove a disk
//	GET    /v1/status[?disk=N]   per-disk status (DiskStatus)
//	POST   /v1/disks/{name}/protect    start replication (ProtectOptions) → DiskInfo
//	POST   /v1/disks/{name}/unprotect  stop replication → DiskInfo
//	POST   /v1/disks/{name}/verify     compare with the replica → replication.VerifyReport
//	POST   /v1/pair/token        issue a pairing token (TokenRequest) → TokenResponse
//	POST   /v1/pairs             pair with a token (PairRequest) → PeerInfo
//	GET    /v1/pairs             the paired sites
//	DELETE /v1/pairs/{site}      forget a paired site
//	GET    /metrics              Prometheus metrics of every disk
//	GET    /debug/pprof/...      Go's profiles, with serve --profile
func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metricsHandler())
	if d.opts.Profile {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	}
	mux.HandleFunc("POST /v1/pair/token", func(w http.ResponseWriter, r *http.Request) {
		var req TokenRequest
		if err := readJSON(r, &req); err != nil {
			writeError(w, err)
			return
		}
		resp, err := d.PairToken(r.Context(), req)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, resp)
	})
	mux.HandleFunc("POST /v1/pairs", func(w http.ResponseWriter, r *http.Request) {
		var req PairRequest
		if err := readJSON(r, &req); err != nil {
			writeError(w, err)
			return
		}
		peer, err := d.Pair(r.Context(), req)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, peer)
	})
	mux.HandleFunc("GET /v1/pairs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Peers(r.Context()))
	})
	mux.HandleFunc("DELETE /v1/pairs/{site}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Unpair(r.Context(), r.PathValue("site")); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/site", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.SiteInfo())
	})
	mux.HandleFunc("GET /v1/disks", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Disks(r.Context()))
	})
	mux.HandleFunc("POST /v1/disks", func(w http.ResponseWriter, r *http.Request) {
		var o CreateOptions
		if err := readJSON(r, &o); err != nil {
			writeError(w, err)
			return
		}
		info, err := d.CreateDisk(r.Context(), o)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, info)
	})
	mux.HandleFunc("GET /v1/disks/{name}", func(w http.ResponseWriter, r *http.Request) {
		info, err := d.Disk(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("DELETE /v1/disks/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.RemoveDisk(r.Context(), r.PathValue("name")); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/disks/{name}/protect", func(w http.ResponseWriter, r *http.Request) {
		var o ProtectOptions
		if err := readJSON(r, &o); err != nil {
			writeError(w, err)
			return
		}
		info, err := d.Protect(r.Context(), r.PathValue("name"), o)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("POST /v1/disks/{name}/unprotect", func(w http.ResponseWriter, r *http.Request) {
		info, err := d.Unprotect(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("POST /v1/disks/{name}/verify", func(w http.ResponseWriter, r *http.Request) {
		rep, err := d.Verify(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := d.Status(r.Context(), r.URL.Query().Get("disk"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	return mux
}

// SiteInfo describes the site and where it serves.
type SiteInfo struct {
	Site    string   `json:"site"`
	DataDir string   `json:"data_dir"`
	NBD     []string `json:"nbd"`            // NBD listeners, unix paths absolute
	FUSE    string   `json:"fuse,omitempty"` // the FUSE mount point, when mounted
}

// SiteInfo describes the site.
func (d *Daemon) SiteInfo() SiteInfo {
	si := SiteInfo{Site: d.cfg.Site, DataDir: d.dataDir, FUSE: d.opts.FUSE}
	for _, spec := range d.opts.NBD {
		a, _, _ := strings.Cut(spec, "?")
		if network, addr, err := ParseAddr(a); err == nil && network == "unix" && !filepath.IsAbs(addr) {
			a = "unix:" + filepath.Join(d.dataDir, addr)
		}
		si.NBD = append(si.NBD, a)
	}
	return si
}

// maxBody bounds a request body: every API request is small.
const maxBody = 1 << 20

func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: malformed request body: %v", ErrBadRequest, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: malformed request body: trailing data", ErrBadRequest)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// apiError is the body of every failed API call.
type apiError struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrBadRequest), errors.Is(err, ErrWrongRole):
		status = http.StatusBadRequest
	case errors.Is(err, ErrDiskNotFound), errors.Is(err, ErrNotPaired):
		status = http.StatusNotFound
	case errors.Is(err, ErrDiskExists):
		status = http.StatusConflict
	case errors.Is(err, replication.ErrNotProtected):
		status = http.StatusConflict
	}
	writeJSON(w, status, apiError{Error: err.Error()})
}
