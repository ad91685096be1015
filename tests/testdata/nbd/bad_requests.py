# Malformed requests get the NBD error the protocol names; the connection
# and other clients carry on.
import os
exec(open(os.path.join(os.environ["SCRIPTS"], "common.py")).read())

g = fresh(strict=False)
size = g.get_size()
expect_errno("read past the end", lambda: g.pread(4096, size - 512), errno.EINVAL)
expect_errno("read at offset past the end", lambda: g.pread(512, size + 4096), errno.EINVAL)
expect_errno("write past the end", lambda: g.pwrite(b"x" * 4096, size - 512), errno.ENOSPC)
expect_errno("zero past the end", lambda: g.zero(4096, size - 512), errno.ENOSPC)
expect_errno("trim past the end", lambda: g.trim(4096, size - 512), errno.EINVAL)
expect_errno("cache past the end", lambda: g.cache(4096, size - 512), errno.EINVAL)
expect_errno("read of length 0", lambda: g.pread(0, 0), errno.EINVAL)
expect_errno("write of length 0", lambda: g.pwrite(b"", 0), errno.EINVAL)
expect_errno("trim of length 0", lambda: g.trim(0, 0), errno.EINVAL)
expect_errno("read of 33 MiB", lambda: g.pread(33 << 20, 0), errno.EINVAL)
expect_errno("write of 33 MiB", lambda: g.pwrite(b"\0" * (33 << 20), 0), errno.EINVAL)
expect_errno("REQ_ONE on a read", lambda: g.pread(512, 0, nbd.CMD_FLAG_REQ_ONE), errno.EINVAL)
expect_errno("NO_HOLE on a write", lambda: g.pwrite(b"y" * 512, 0, nbd.CMD_FLAG_NO_HOLE), errno.EINVAL)
expect_errno("FAST_ZERO on a trim", lambda: g.trim(512, 0, nbd.CMD_FLAG_FAST_ZERO), errno.EINVAL)
# The connection is still in sync after all that.
g.pwrite(b"z" * 512, 0)
if g.pread(512, 0) != b"z" * 512:
    raise SystemExit("read after the bad requests returned wrong data")
g.shutdown()

# Without structured replies, DF and block status were not negotiated.
h2 = nbd.NBD()
h2.set_strict_mode(0)
h2.set_request_structured_replies(False)
h2.connect_uri(URI)
expect_errno("DF without structured replies", lambda: h2.pread(512, 0, nbd.CMD_FLAG_DF), errno.EINVAL)
expect_errno("block status without a meta context", lambda: h2.block_status(4096, 0, lambda *a: 0), errno.EINVAL)
h2.pread(512, 0)
h2.shutdown()

still_serving()
print("OK")
