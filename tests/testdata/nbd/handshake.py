# Malformed handshakes and the shapes of known CVEs of nbd-server, qemu-nbd
# and nbdkit: each gets the option error the protocol names or the end of
# that one connection, and another client is served afterwards.
import os
exec(open(os.path.join(os.environ["SCRIPTS"], "common.py")).read())

ERR_UNSUP, ERR_INVALID, ERR_UNKNOWN, ERR_TOO_BIG = 0x80000001, 0x80000003, 0x80000006, 0x80000009

def go_data(name, infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)

# Truncated handshake: the client flags cut short, then silence ended by close.
s = raw(); recv_exact(s, 18); s.sendall(b"\0\0"); s.shutdown(socket.SHUT_WR); expect_closed(s, "truncated client flags")
# Unknown client flags.
s = raw(); greet(s, 0x100); expect_closed(s, "unknown client flags")
# Export name lengths of 0xffffffff and past 4096 (NBD_OPT_EXPORT_NAME).
s = raw(); greet(s); s.sendall(b"IHAVEOPT" + struct.pack(">II", 1, 0xFFFFFFFF)); expect_closed(s, "export name of 0xffffffff bytes")
s = raw(); greet(s); opt(s, 1, b"a" * 5000); expect_closed(s, "export name of 5000 bytes")
# The same inside NBD_OPT_GO: the length lies, or is too long.
s = raw(); greet(s); opt(s, 7, struct.pack(">I", 0xFFFFFFFF) + b"disk\0\0")
typ, _ = opt_reply(s, 7)
assert typ == ERR_INVALID, hex(typ); print("ok: GO name length 0xffffffff -> NBD_REP_ERR_INVALID")
opt(s, 7, go_data(b"a" * 4097))
typ, _ = opt_reply(s, 7)
assert typ == ERR_INVALID, hex(typ); print("ok: GO name of 4097 bytes -> NBD_REP_ERR_INVALID")
s.close()
# An option payload of gigabytes: refused without reading it.
# The server may close before the client has sent it all: that is the point.
s = raw(); greet(s)
try:
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, 3 << 30) + b"\0" * 65536)
except (BrokenPipeError, ConnectionResetError):
    pass
expect_closed(s, "option payload of 3 GiB")
# An option longer than the server accepts but small enough to skip.
s = raw(); greet(s); opt(s, 7, b"\0" * 100000)
typ, _ = opt_reply(s, 7)
assert typ == ERR_TOO_BIG, hex(typ); print("ok: option of 100000 bytes -> NBD_REP_ERR_TOO_BIG")
# An unknown option, then an unknown export: errors, connection kept.
opt(s, 0xBEEF, b"hello")
typ, _ = opt_reply(s, 0xBEEF)
assert typ == ERR_UNSUP, hex(typ); print("ok: unknown option -> NBD_REP_ERR_UNSUP")
opt(s, 7, go_data(b"no-such-export"))
typ, _ = opt_reply(s, 7)
assert typ == ERR_UNKNOWN, hex(typ); print("ok: unknown export -> NBD_REP_ERR_UNKNOWN")
s.close()
# A command before NBD_OPT_GO.
s = raw(); greet(s); s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 512)); expect_closed(s, "read request before NBD_OPT_GO")
# A flood of half-open connections does not stop other clients.
flood = []
for i in range(300):
    f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); f.connect(SOCK); flood.append(f)
still_serving(); print("ok: 300 half-open connections, other clients served")
for f in flood:
    f.close()

# libnbd's own option mode: LIST, INFO of an unknown export, ABORT.
g = nbd.NBD()
g.set_opt_mode(True)
g.connect_uri(URI)
names = []
g.opt_list(lambda name, desc: names.append(name))
print("ok: NBD_OPT_LIST ->", names)
g.set_export_name("no-such-export")
try:
    g.opt_info()
    raise SystemExit("NBD_OPT_INFO of an unknown export succeeded")
except nbd.Error:
    print("ok: NBD_OPT_INFO of an unknown export refused")
g.opt_abort()

still_serving()
print("OK")
