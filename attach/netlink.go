package attach

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// A minimal generic netlink client: enough to resolve a family and send
// one command with attributes, reading back the reply. Messages are in
// host byte order, as netlink is.

const (
	nlmsgHdrLen = 16
	genlHdrLen  = 4
	nlaHdrLen   = 4
	nlaNested   = 0x8000
	nlaTypeMask = 0x3fff
)

// errBadNetlink reports a reply that does not parse.
var errBadNetlink = errors.New("attach: malformed netlink message")

// nlAttr is one netlink attribute. Nested attributes carry their children
// encoded in Value.
type nlAttr struct {
	Type  uint16
	Value []byte
}

func u32Attr(t uint16, v uint32) nlAttr {
	return nlAttr{Type: t, Value: binary.NativeEndian.AppendUint32(nil, v)}
}

func u64Attr(t uint16, v uint64) nlAttr {
	return nlAttr{Type: t, Value: binary.NativeEndian.AppendUint64(nil, v)}
}

func strAttr(t uint16, s string) nlAttr {
	return nlAttr{Type: t, Value: append([]byte(s), 0)}
}

func nestedAttr(t uint16, children ...nlAttr) nlAttr {
	return nlAttr{Type: t | nlaNested, Value: encodeAttrs(children)}
}

func align4(n int) int { return (n + 3) &^ 3 }

// encodeAttrs encodes attributes, each padded to four bytes.
func encodeAttrs(attrs []nlAttr) []byte {
	var b []byte
	for _, a := range attrs {
		l := nlaHdrLen + len(a.Value)
		b = binary.NativeEndian.AppendUint16(b, uint16(l))
		b = binary.NativeEndian.AppendUint16(b, a.Type)
		b = append(b, a.Value...)
		b = append(b, make([]byte, align4(l)-l)...)
	}
	return b
}

// parseAttrs decodes a run of attributes.
func parseAttrs(b []byte) ([]nlAttr, error) {
	var out []nlAttr
	for len(b) > 0 {
		if len(b) < nlaHdrLen {
			return nil, fmt.Errorf("attribute header of %d bytes: %w", len(b), errBadNetlink)
		}
		l := int(binary.NativeEndian.Uint16(b))
		if l < nlaHdrLen || l > len(b) {
			return nil, fmt.Errorf("attribute length %d of %d: %w", l, len(b), errBadNetlink)
		}
		out = append(out, nlAttr{Type: binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask, Value: b[nlaHdrLen:l]})
		b = b[min(align4(l), len(b)):]
	}
	return out, nil
}

func findAttr(attrs []nlAttr, t uint16) ([]byte, bool) {
	for _, a := range attrs {
		if a.Type == t {
			return a.Value, true
		}
	}
	return nil, false
}

// genlMessage encodes one generic netlink request.
func genlMessage(family uint16, flags uint16, seq uint32, cmd, version uint8, attrs []nlAttr) []byte {
	payload := encodeAttrs(attrs)
	b := make([]byte, 0, nlmsgHdrLen+genlHdrLen+len(payload))
	b = binary.NativeEndian.AppendUint32(b, uint32(nlmsgHdrLen+genlHdrLen+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, family)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, cmd, version, 0, 0)
	return append(b, payload...)
}

// nlReply is what one request got back.
type nlReply struct {
	Attrs []nlAttr // of the first generic netlink message
	Errno unix.Errno
	Acked bool // an NLMSG_ERROR with errno 0 (or NLMSG_DONE) ended it
}

// parseReplies reads the messages of one recvfrom for sequence seq. A
// negative errno in NLMSG_ERROR becomes Errno.
func parseReplies(b []byte, seq uint32) (nlReply, error) {
	var r nlReply
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return r, fmt.Errorf("message header of %d bytes: %w", len(b), errBadNetlink)
		}
		l := int(binary.NativeEndian.Uint32(b))
		typ := binary.NativeEndian.Uint16(b[4:])
		mseq := binary.NativeEndian.Uint32(b[8:])
		if l < nlmsgHdrLen || l > len(b) {
			return r, fmt.Errorf("message length %d of %d: %w", l, len(b), errBadNetlink)
		}
		body := b[nlmsgHdrLen:l]
		b = b[min(align4(l), len(b)):]
		if mseq != seq {
			continue
		}
		switch typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return r, fmt.Errorf("error message of %d bytes: %w", len(body), errBadNetlink)
			}
			if e := int32(binary.NativeEndian.Uint32(body)); e < 0 {
				r.Errno = unix.Errno(-e)
			}
			r.Acked = true
			return r, nil
		case unix.NLMSG_DONE:
			r.Acked = true
			return r, nil
		case unix.NLMSG_NOOP, unix.NLMSG_OVERRUN:
			continue
		}
		if len(body) < genlHdrLen {
			return r, fmt.Errorf("generic message of %d bytes: %w", len(body), errBadNetlink)
		}
		if r.Attrs == nil {
			attrs, err := parseAttrs(body[genlHdrLen:])
			if err != nil {
				return r, err
			}
			r.Attrs = attrs
			if r.Attrs == nil {
				r.Attrs = []nlAttr{}
			}
		}
	}
	return r, nil
}

// genlConn is a generic netlink socket.
type genlConn struct {
	fd  int
	seq uint32
}

func dialGenl() (*genlConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &genlConn{fd: fd}, nil
}

func (c *genlConn) Close() error { return unix.Close(c.fd) }

// request sends one command with NLM_F_REQUEST|NLM_F_ACK and waits for
// its reply or acknowledgement, up to ctx's deadline (at most a minute).
func (c *genlConn) request(ctx context.Context, family uint16, cmd, version uint8, attrs []nlAttr) ([]nlAttr, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.seq++
	msg := genlMessage(family, unix.NLM_F_REQUEST|unix.NLM_F_ACK, c.seq, cmd, version, attrs)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netlink send: %w", err)
	}
	deadline := time.Now().Add(time.Minute)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	tv := unix.NsecToTimeval(max(time.Until(deadline), time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("netlink timeout: %w", err)
	}
	buf := make([]byte, 65536)
	var attrs0 []nlAttr
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		r, err := parseReplies(buf[:n], c.seq)
		if err != nil {
			return nil, err
		}
		if r.Attrs != nil && attrs0 == nil {
			attrs0 = r.Attrs
		}
		if r.Errno != 0 {
			return nil, r.Errno
		}
		if r.Acked {
			return attrs0, nil
		}
	}
}

// resolveFamily returns the id of the generic netlink family name.
func (c *genlConn) resolveFamily(ctx context.Context, name string) (uint16, error) {
	attrs, err := c.request(ctx, unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY, 1,
		[]nlAttr{strAttr(unix.CTRL_ATTR_FAMILY_NAME, name)})
	if err != nil {
		return 0, fmt.Errorf("resolve netlink family %q: %w", name, err)
	}
	v, ok := findAttr(attrs, unix.CTRL_ATTR_FAMILY_ID)
	if !ok || len(v) < 2 {
		return 0, fmt.Errorf("resolve netlink family %q: no family id: %w", name, errBadNetlink)
	}
	return binary.NativeEndian.Uint16(v), nil
}
