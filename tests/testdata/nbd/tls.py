# TLS required on the listener: a client without TLS is refused, one with
# the right CA is served, one trusting another CA fails, and plaintext sent
# right after STARTTLS is never taken as an option.
import os
exec(open(os.path.join(os.environ["SCRIPTS"], "common.py")).read())
CERTS, OTHER = os.environ["CERTS"], os.environ["OTHER_CERTS"]

g = nbd.NBD()
g.set_tls(nbd.TLS_DISABLE)
try:
    g.connect_uri(URI)
    raise SystemExit("client without TLS was served")
except nbd.Error as e:
    print("ok: client without TLS refused:", e.string)

g = nbd.NBD()
g.set_tls(nbd.TLS_REQUIRE)
g.set_tls_certificates(CERTS)
g.connect_uri(URI)
if not g.get_tls_negotiated():
    raise SystemExit("TLS not negotiated")
g.pwrite(b"secret" * 100, 0)
if g.pread(600, 0) != b"secret" * 100:
    raise SystemExit("read over TLS returned wrong data")
g.shutdown()
print("ok: client with the right CA served over TLS")

g = nbd.NBD()
g.set_tls(nbd.TLS_REQUIRE)
g.set_tls_certificates(OTHER)
try:
    g.connect_uri(URI)
    raise SystemExit("client trusting another CA was served")
except nbd.Error as e:
    print("ok: client trusting another CA refused:", e.string)

# STARTTLS followed by plaintext in the same packet.
s = raw(); greet(s)
s.sendall(b"IHAVEOPT" + struct.pack(">II", 5, 0) + b"IHAVEOPT" + struct.pack(">II", 7, 10) + struct.pack(">I", 4) + b"disk\0\0")
typ, _ = opt_reply(s, 5)
assert typ == 1, hex(typ)
expect_closed(s, "plaintext after STARTTLS")

g = nbd.NBD()
g.set_tls(nbd.TLS_REQUIRE)
g.set_tls_certificates(CERTS)
g.connect_uri(URI)
g.pread(512, 0)
g.shutdown()
print("OK")
