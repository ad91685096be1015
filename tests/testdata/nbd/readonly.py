# Writes to a read-only export fail with EPERM; reads work.
import os
exec(open(os.path.join(os.environ["SCRIPTS"], "common.py")).read())

g = fresh(strict=False)
if not g.is_read_only():
    raise SystemExit("export not advertised read-only")
if g.can_trim() or g.can_zero():
    raise SystemExit("read-only export advertises trim or zero")
expect_errno("write to a read-only export", lambda: g.pwrite(b"x" * 512, 0), errno.EPERM)
expect_errno("trim of a read-only export", lambda: g.trim(512, 0), errno.EPERM)
expect_errno("zero of a read-only export", lambda: g.zero(512, 0), errno.EPERM)
g.pread(4096, 0)
g.shutdown()
print("OK")
