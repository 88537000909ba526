package wire

import (
	"net"
	"syscall"
)

// peerUID returns the user id of the process at the other end of a unix
// socket connection, as the kernel recorded it at connect (SO_PEERCRED).
func peerUID(nc net.Conn) (uint32, bool) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *syscall.Ucred
	var credErr error
	err = raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || credErr != nil {
		return 0, false
	}
	return cred.Uid, true
}
