package acceptance

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestShutdown(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		sig  syscall.Signal
		// idle keeps a client connection open across the signal, as each
		// Postfix smtp process does for about 10 s.
		idle bool
	}{
		{name: "SIGTERM", sig: syscall.SIGTERM},
		{name: "SIGINT", sig: syscall.SIGINT},
		{name: "SIGTERM with an idle client", sig: syscall.SIGTERM, idle: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, listenUnix+hermetic+rules)
			sock := filepath.Join(d.dir, "policy.sock")
			if _, err := os.Stat(sock); err != nil {
				t.Fatalf("socket file: %v", err)
			}
			checkLookup(t, d.socketmap(t, "tlspolicy"), lookup{key: "example.org", want: verify}, "")

			var client *rawConn
			if tc.idle {
				client = newRawConn(t, d, "socketmap", "idle client")
				client.ask("tlspolicy", "example.org", "OK "+verify)
			}

			start := time.Now()
			if code := d.stop(t, tc.sig); code != 0 {
				t.Errorf("exit code %d after %v, want 0", code, tc.sig)
			}
			t.Logf("exited %v after %v", time.Since(start).Round(time.Millisecond), tc.sig)

			if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("socket file %s after exit: %v, want it removed", sock, err)
			}
			if code, err := d.healthz(); err == nil {
				t.Errorf("/healthz answers %d after exit", code)
			}
			if client != nil {
				client.c.SetReadDeadline(time.Now().Add(ioTimeout))
				if n, err := client.r.Read(make([]byte, 1)); n != 0 || err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("idle client after exit: read %d bytes, %v; want end of file", n, err)
				}
			}
		})
	}
}
