package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"

	"github.com/tandem-dr/tandem/replication"
)

// Client calls a running daemon's API over its unix socket. The CLI and
// the console menu use it; every method is one API call.
type Client struct {
	socket string
	http   *http.Client
}

// ErrNotRunning is returned when no daemon answers on the API socket.
var ErrNotRunning = errors.New("appliance: daemon not running")

// NewClient returns a client for the daemon serving dataDir.
func NewClient(dataDir string) *Client {
	sock := APISocket(dataDir)
	return &Client{
		socket: sock,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		}},
	}
}

// do sends one request and decodes the answer into out (when not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tandem"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w: nothing answers on %s (start it with tandem serve)", ErrNotRunning, c.socket)
		}
		return fmt.Errorf("api %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("api %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e apiError
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &APIError{Status: resp.StatusCode, Message: e.Error}
		}
		return &APIError{Status: resp.StatusCode, Message: resp.Status}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("api %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// APIError is a failure the daemon reported.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Site describes the site.
func (c *Client) Site(ctx context.Context) (SiteInfo, error) {
	var s SiteInfo
	return s, c.do(ctx, http.MethodGet, "/v1/site", nil, &s)
}

// CreateDisk creates a disk.
func (c *Client) CreateDisk(ctx context.Context, o CreateOptions) (DiskInfo, error) {
	var di DiskInfo
	return di, c.do(ctx, http.MethodPost, "/v1/disks", o, &di)
}

// Disks lists the disks.
func (c *Client) Disks(ctx context.Context) ([]DiskInfo, error) {
	var out []DiskInfo
	return out, c.do(ctx, http.MethodGet, "/v1/disks", nil, &out)
}

// Disk describes one disk.
func (c *Client) Disk(ctx context.Context, name string) (DiskInfo, error) {
	var di DiskInfo
	return di, c.do(ctx, http.MethodGet, "/v1/disks/"+url.PathEscape(name), nil, &di)
}

// RemoveDisk removes a disk.
func (c *Client) RemoveDisk(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/disks/"+url.PathEscape(name), nil, nil)
}

// Status reports every disk, or only the one named.
func (c *Client) Status(ctx context.Context, name string) ([]DiskStatus, error) {
	var out []DiskStatus
	q := ""
	if name != "" {
		q = "?disk=" + url.QueryEscape(name)
	}
	return out, c.do(ctx, http.MethodGet, "/v1/status"+q, nil, &out)
}

// PairToken issues a pairing token on the secondary.
func (c *Client) PairToken(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	var out TokenResponse
	return out, c.do(ctx, http.MethodPost, "/v1/pair/token", req, &out)
}

// Pair pairs the primary with the secondary that issued the token.
func (c *Client) Pair(ctx context.Context, token string) (PeerInfo, error) {
	var out PeerInfo
	return out, c.do(ctx, http.MethodPost, "/v1/pairs", PairRequest{Token: token}, &out)
}

// Peers lists the paired sites.
func (c *Client) Peers(ctx context.Context) ([]PeerInfo, error) {
	var out []PeerInfo
	return out, c.do(ctx, http.MethodGet, "/v1/pairs", nil, &out)
}

// Unpair forgets a paired site.
func (c *Client) Unpair(ctx context.Context, site string) error {
	return c.do(ctx, http.MethodDelete, "/v1/pairs/"+url.PathEscape(site), nil, nil)
}

// Protect starts replicating a disk.
func (c *Client) Protect(ctx context.Context, name string, o ProtectOptions) (DiskInfo, error) {
	var out DiskInfo
	return out, c.do(ctx, http.MethodPost, "/v1/disks/"+url.PathEscape(name)+"/protect", o, &out)
}

// Unprotect stops replicating a disk.
func (c *Client) Unprotect(ctx context.Context, name string) (DiskInfo, error) {
	var out DiskInfo
	return out, c.do(ctx, http.MethodPost, "/v1/disks/"+url.PathEscape(name)+"/unprotect", nil, &out)
}

// Verify compares a disk with its replica.
func (c *Client) Verify(ctx context.Context, name string) (replication.VerifyReport, error) {
	var out replication.VerifyReport
	return out, c.do(ctx, http.MethodPost, "/v1/disks/"+url.PathEscape(name)+"/verify", nil, &out)
}
