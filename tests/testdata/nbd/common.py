# Shared by the nbdsh scripts of tests/nbd_test.go; each script does
# exec(open(os.path.join(os.environ["SCRIPTS"], "common.py")).read()).
import errno
import os
import socket
import struct
import nbd

URI = os.environ.get("URI", "")
SOCK = os.environ.get("SOCK", "")


def expect_errno(what, fn, want):
    """fn must fail with the NBD error want (an errno value)."""
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != want:
            raise SystemExit("%s: got errno %s (%s), want %s" % (what, e.errnum, e.string, errno.errorcode[want]))
        print("ok: %s -> %s" % (what, errno.errorcode[want]))
        return
    raise SystemExit("%s: succeeded, want %s" % (what, errno.errorcode[want]))


def fresh(uri=None, strict=True):
    """A new connected handle."""
    g = nbd.NBD()
    if not strict:
        g.set_strict_mode(0)
    g.connect_uri(uri or URI)
    return g


def still_serving():
    """Another client is served normally."""
    g = fresh()
    g.pwrite(b"alive!" * 10, 4096)
    if g.pread(60, 4096) != b"alive!" * 10:
        raise SystemExit("another client read back wrong data")
    g.shutdown()


def raw():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(SOCK)
    return s


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("connection closed while reading %d bytes" % n)
        b += c
    return b


def greet(s, flags=3):
    g = recv_exact(s, 18)
    if g[:16] != b"NBDMAGICIHAVEOPT":
        raise SystemExit("bad greeting %r" % g)
    s.sendall(struct.pack(">I", flags))


def opt(s, o, data=b""):
    s.sendall(b"IHAVEOPT" + struct.pack(">II", o, len(data)) + data)


def opt_reply(s, o):
    h = recv_exact(s, 20)
    magic, ro, typ, n = struct.unpack(">QIII", h)
    if magic != 0x3E889045565A9 or ro != o:
        raise SystemExit("bad option reply %r" % h)
    return typ, recv_exact(s, n)


def expect_closed(s, what):
    """The server ends the connection (EOF or reset), without hanging."""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        raise SystemExit("%s: connection still open after 15s" % what)
    print("ok: %s -> connection closed" % what)
