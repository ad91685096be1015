package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// errHardDisconnect ends a connection during the handshake without a reply.
var errHardDisconnect = errors.New("nbd: handshake ended by server")

// session is what the handshake agreed on.
type session struct {
	exp        *Export
	flags      uint16
	structured bool
	metaBase   bool // base:allocation selected
}

// handshake is the state of option haggling on one connection.
type handshake struct {
	c          *conn
	fixed      bool
	noZeroes   bool
	tlsDone    bool
	structured bool
	metaBase   bool
	metaExport string
	out        []byte
}

// negotiate runs the fixed-newstyle handshake and returns the opened export,
// or an error after which the connection is closed.
func (c *conn) negotiate(ctx context.Context) (*session, error) {
	h := &handshake{c: c}
	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:], magicNBD)
	binary.BigEndian.PutUint64(greet[8:], magicOpt)
	binary.BigEndian.PutUint16(greet[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(greet[:]); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.nc, cf[:]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(flagFixedNewstyle|flagNoZeroes) != 0 {
		return nil, fmt.Errorf("client flags %#x: %w", flags, errHardDisconnect)
	}
	h.fixed = flags&flagFixedNewstyle != 0
	h.noZeroes = flags&flagNoZeroes != 0
	if c.tlsMode == TLSRequired && !h.fixed {
		return nil, fmt.Errorf("client without fixed newstyle on a TLS-only listener: %w", errHardDisconnect)
	}

	var oh [16]byte
	for {
		if _, err := io.ReadFull(c.nc, oh[:]); err != nil {
			return nil, fmt.Errorf("read option header: %w", err)
		}
		if binary.BigEndian.Uint64(oh[0:]) != magicOpt {
			return nil, fmt.Errorf("option magic %#x: %w", binary.BigEndian.Uint64(oh[0:]), errHardDisconnect)
		}
		opt := binary.BigEndian.Uint32(oh[8:])
		n := binary.BigEndian.Uint32(oh[12:])
		if n > MaxOptionLength {
			if opt == optExportName || n > discardLimit {
				return nil, fmt.Errorf("option %d of %d bytes: %w", opt, n, errHardDisconnect)
			}
			if _, err := io.CopyN(io.Discard, c.nc, int64(n)); err != nil {
				return nil, fmt.Errorf("skip option %d: %w", opt, err)
			}
			if err := h.reply(opt, repErrTooBig, []byte("option too long")); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.nc, data); err != nil {
			return nil, fmt.Errorf("read option %d payload: %w", opt, err)
		}
		sess, err := h.option(ctx, opt, data)
		if err != nil || sess != nil {
			return sess, err
		}
	}
}

// reply sends one option reply.
func (h *handshake) reply(opt, typ uint32, data []byte) error {
	b := h.out[:0]
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	h.out = b
	if _, err := h.c.nc.Write(b); err != nil {
		return fmt.Errorf("send reply to option %d: %w", opt, err)
	}
	return nil
}

func (h *handshake) tlsRefused() bool {
	return h.c.tlsMode == TLSRequired && !h.tlsDone
}

// option handles one option. It returns a session when transmission starts.
func (h *handshake) option(ctx context.Context, opt uint32, data []byte) (*session, error) {
	c := h.c
	if c.srv.isClosed() && opt != optAbort {
		if opt == optExportName {
			return nil, fmt.Errorf("export name during shutdown: %w", errHardDisconnect)
		}
		if err := h.reply(opt, repErrShutdown, []byte("server shutting down")); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("option during shutdown: %w", errHardDisconnect)
	}
	switch opt {
	case optExportName:
		if h.tlsRefused() {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME before STARTTLS: %w", errHardDisconnect)
		}
		if len(data) > MaxNameLength {
			return nil, fmt.Errorf("export name of %d bytes: %w", len(data), errHardDisconnect)
		}
		sess, err := h.open(ctx, string(data))
		if err != nil {
			return nil, fmt.Errorf("open export %q: %w", data, err)
		}
		b := make([]byte, 10, 10+124)
		binary.BigEndian.PutUint64(b, uint64(sess.exp.Size))
		binary.BigEndian.PutUint16(b[8:], sess.flags)
		if !h.noZeroes {
			b = b[:10+124]
		}
		if _, err := c.nc.Write(b); err != nil {
			sess.close()
			return nil, fmt.Errorf("send export info: %w", err)
		}
		return sess, nil

	case optAbort:
		h.reply(opt, repAck, nil) // the client may already be gone
		return nil, fmt.Errorf("client aborted: %w", io.EOF)

	case optList:
		if len(data) != 0 {
			return nil, h.reply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		if h.tlsRefused() {
			return nil, h.reply(opt, repErrTLSReqd, []byte("TLS required"))
		}
		list, err := c.srv.exp.List(ctx)
		if err != nil {
			return nil, h.reply(opt, repErrPlatform, []byte("cannot list exports"))
		}
		for _, e := range list {
			name := truncate(e.Name, MaxNameLength)
			b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			b = append(b, name...)
			b = append(b, truncate(e.Description, MaxNameLength)...)
			if err := h.reply(opt, repServer, b); err != nil {
				return nil, err
			}
		}
		return nil, h.reply(opt, repAck, nil)

	case optStartTLS:
		if len(data) != 0 {
			return nil, h.reply(opt, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
		}
		if c.tlsCfg == nil {
			return nil, h.reply(opt, repErrPolicy, []byte("TLS not available on this listener"))
		}
		if h.tlsDone {
			return nil, h.reply(opt, repErrInvalid, []byte("TLS already negotiated"))
		}
		if err := h.reply(opt, repAck, nil); err != nil {
			return nil, err
		}
		// The TLS session reads the raw connection directly: nothing the
		// client sent in plaintext after STARTTLS is ever taken as an
		// option (the handshake reads are unbuffered).
		tc := tls.Server(c.raw, c.tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c.setConn(tc)
		// Everything agreed before TLS is forgotten.
		h.tlsDone = true
		h.structured, h.metaBase, h.metaExport = false, false, ""
		return nil, nil

	case optInfo, optGo:
		return h.infoGo(ctx, opt, data)

	case optStructuredReply:
		if len(data) != 0 {
			return nil, h.reply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		if h.tlsRefused() {
			return nil, h.reply(opt, repErrTLSReqd, []byte("TLS required"))
		}
		if h.structured {
			return nil, h.reply(opt, repErrInvalid, []byte("structured replies already negotiated"))
		}
		h.structured = true
		return nil, h.reply(opt, repAck, nil)

	case optListMetaContext, optSetMetaContext:
		return nil, h.metaContext(ctx, opt, data)

	default:
		if h.tlsRefused() {
			return nil, h.reply(opt, repErrTLSReqd, []byte("TLS required"))
		}
		return nil, h.reply(opt, repErrUnsup, []byte("option not supported"))
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// parseName reads a 32-bit length-prefixed string from b.
func parseName(b []byte) (name string, rest []byte, ok bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if n > MaxNameLength || uint64(n) > uint64(len(b)-4) {
		return "", nil, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}

// infoGo serves NBD_OPT_INFO and NBD_OPT_GO. Only GO opens the export.
func (h *handshake) infoGo(ctx context.Context, opt uint32, data []byte) (*session, error) {
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 2 {
		return nil, h.reply(opt, repErrInvalid, []byte("malformed info request"))
	}
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return nil, h.reply(opt, repErrInvalid, []byte("malformed info request"))
	}
	if h.tlsRefused() {
		return nil, h.reply(opt, repErrTLSReqd, []byte("TLS required"))
	}
	var wantName, wantDesc bool
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}

	var info ExportInfo
	var flags uint16
	var sess *session
	if opt == optGo {
		s, err := h.open(ctx, name)
		if err != nil {
			return nil, h.replyOpenErr(opt, err)
		}
		sess, info, flags = s, s.exp.ExportInfo, s.flags
	} else {
		i, err := h.c.srv.exp.Info(ctx, name)
		if err != nil {
			return nil, h.replyOpenErr(opt, err)
		}
		info = i
		flags = i.Flags | FlagHasFlags | FlagSendCache
		if i.ReadOnly {
			flags |= FlagReadOnly
			flags &^= FlagSendTrim | FlagSendWriteZeroes | FlagSendFastZero
		}
		if h.structured {
			flags |= FlagSendDF
		} else {
			flags &^= FlagSendDF
		}
	}
	send := func(b []byte) error {
		if err := h.reply(opt, repInfo, b); err != nil {
			if sess != nil {
				sess.close()
			}
			return err
		}
		return nil
	}
	b := binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(info.Size))
	b = binary.BigEndian.AppendUint16(b, flags)
	if err := send(b); err != nil {
		return nil, err
	}
	if wantName {
		b = binary.BigEndian.AppendUint16(b[:0], infoName)
		b = append(b, truncate(info.Name, MaxNameLength)...)
		if err := send(b); err != nil {
			return nil, err
		}
	}
	if wantDesc && info.Description != "" {
		b = binary.BigEndian.AppendUint16(b[:0], infoDescription)
		b = append(b, truncate(info.Description, MaxNameLength)...)
		if err := send(b); err != nil {
			return nil, err
		}
	}
	// The server accepts any alignment, so it always states its sizes.
	b = binary.BigEndian.AppendUint16(b[:0], infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint32(b, PreferredBlockSize)
	b = binary.BigEndian.AppendUint32(b, MaxPayload)
	if err := send(b); err != nil {
		return nil, err
	}
	if err := h.reply(opt, repAck, nil); err != nil {
		if sess != nil {
			sess.close()
		}
		return nil, err
	}
	return sess, nil
}

func (h *handshake) replyOpenErr(opt uint32, err error) error {
	h.c.srv.log.Debug("nbd export refused", logKeyErr, err)
	if errors.Is(err, ErrUnknownExport) {
		return h.reply(opt, repErrUnknown, []byte("unknown export"))
	}
	if h.c.srv.isClosed() {
		return h.reply(opt, repErrShutdown, []byte("server shutting down"))
	}
	return h.reply(opt, repErrUnknown, []byte("export unavailable"))
}

// open opens the export for transmission and fixes the transmission flags.
func (h *handshake) open(ctx context.Context, name string) (*session, error) {
	exp, err := h.c.srv.exp.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	if exp == nil || exp.Backend == nil {
		return nil, fmt.Errorf("exporter returned no backend for %q", name)
	}
	exp.Size = exp.Backend.Size()
	s := &session{exp: exp, structured: h.structured}
	s.metaBase = h.metaBase && h.structured && h.metaExport == name
	s.flags = transmissionFlags(exp, h.structured)
	return s, nil
}

func (s *session) close() {
	if s.exp.Close != nil {
		s.exp.Close()
	}
}

// transmissionFlags advertises exactly what the backend can do.
func transmissionFlags(exp *Export, structured bool) uint16 {
	f := FlagsFor(exp.Backend, exp.ReadOnly)
	if structured {
		f |= FlagSendDF
	}
	return f
}

// FlagsFor returns the transmission flags the server advertises for an
// export of backend b (without FlagSendDF, which depends on the client).
// Exporters use it to fill ExportInfo.Flags.
func FlagsFor(b Backend, readOnly bool) uint16 {
	f := FlagHasFlags | FlagSendCache
	if _, ok := b.(Flusher); ok {
		f |= FlagSendFlush | FlagSendFUA
	}
	if readOnly {
		f |= FlagReadOnly
	} else {
		f |= FlagSendWriteZeroes
		if _, ok := b.(Trimmer); ok {
			f |= FlagSendTrim
		}
		if _, ok := b.(Zeroer); ok {
			f |= FlagSendFastZero
		}
	}
	if mc, ok := b.(MultiConner); ok && mc.CanMultiConn() {
		f |= FlagCanMultiConn
	}
	return f
}

// metaContext serves NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
func (h *handshake) metaContext(ctx context.Context, opt uint32, data []byte) error {
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 4 {
		return h.reply(opt, repErrInvalid, []byte("malformed meta context request"))
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	queries := make([]string, 0, min(nq, 64))
	for i := uint32(0); i < nq; i++ {
		var q string
		q, rest, ok = parseName(rest)
		if !ok {
			return h.reply(opt, repErrInvalid, []byte("malformed meta context query"))
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return h.reply(opt, repErrInvalid, []byte("trailing bytes in meta context request"))
	}
	if h.tlsRefused() {
		return h.reply(opt, repErrTLSReqd, []byte("TLS required"))
	}
	if opt == optSetMetaContext && !h.structured {
		return h.reply(opt, repErrInvalid, []byte("structured replies not negotiated"))
	}
	if _, err := h.c.srv.exp.Info(ctx, name); err != nil {
		return h.replyOpenErr(opt, err)
	}
	match := false
	if opt == optListMetaContext && len(queries) == 0 {
		match = true
	}
	for _, q := range queries {
		if q == metaBaseAllocation || opt == optListMetaContext && q == "base:" {
			match = true
		}
	}
	if opt == optSetMetaContext {
		h.metaBase, h.metaExport = match, name
	}
	if match {
		b := binary.BigEndian.AppendUint32(nil, metaBaseAllocationID)
		b = append(b, metaBaseAllocation...)
		if err := h.reply(opt, repMetaContext, b); err != nil {
			return err
		}
	}
	return h.reply(opt, repAck, nil)
}
