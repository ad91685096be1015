package attach

import "context"

// Internals the external tests reach.
var (
	ParseModulesDep = parseModulesDep
	FindModule      = findModule
	EncodeAttrs     = encodeAttrs
	ParseAttrs      = parseAttrs
	GenlMessage     = genlMessage
	NBDConnectAttrs = nbdConnectAttrs
	ErrBadNetlink   = errBadNetlink
)

// NLAttr is nlAttr for tests.
type NLAttr = nlAttr

// ParseReplies exposes parseReplies' result as plain values.
func ParseReplies(b []byte, seq uint32) (attrs []NLAttr, errno int, acked bool, err error) {
	r, err := parseReplies(b, seq)
	return r.Attrs, int(r.Errno), r.Acked, err
}

// ResolveFamily resolves a generic netlink family over a new socket.
func ResolveFamily(ctx context.Context, name string) (uint16, error) {
	c, err := dialGenl()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.resolveFamily(ctx, name)
}
