package wire

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// onceCloseListener lets Serve, Close and Shutdown all close a listener
// without the later ones reporting "use of closed network connection".
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// Listen opens a listener for a configured address: "host:port" for TCP, or
// "unix:/path" for a socket file. A socket file left behind by a daemon that
// died is removed; a socket someone still listens on, or a path that is not
// a socket, is an error rather than something to delete. The socket's mode
// is set to mode (0: 0666, so that any local MTA user may query it). Closing
// the listener removes the socket file.
func Listen(addr string, mode os.FileMode) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if path == "" {
		return nil, fmt.Errorf("listen %q: empty socket path", addr)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, fmt.Errorf("listen %q: %w", addr, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if mode == 0 {
		mode = 0o666
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen %q: %w", addr, err)
	}
	return l, nil
}

// removeStaleSocket removes path if it is a socket that nobody listens on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not removing it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by another process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("cannot tell whether socket %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}
