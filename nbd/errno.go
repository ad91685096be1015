package nbd

import (
	"errors"
	"syscall"
)

var errTooManyFiles = syscall.EMFILE

// errnoOf maps a backend error to the NBD error sent to the client.
func errnoOf(err error) Errno {
	var e Errno
	if errors.As(err, &e) {
		return e
	}
	var se syscall.Errno
	if errors.As(err, &se) {
		switch se {
		case syscall.EPERM, syscall.EROFS, syscall.EACCES:
			return EPERM
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.ENOMEM:
			return ENOMEM
		case syscall.EINVAL:
			return EINVAL
		case syscall.EOVERFLOW:
			return EOVERFLOW
		case syscall.ENOTSUP, syscall.ENOSYS:
			return ENOTSUP
		case syscall.ESHUTDOWN:
			return ESHUTDOWN
		}
	}
	return EIO
}
