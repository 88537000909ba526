// Package redistest starts a real redis-server for tests: on a free
// 127.0.0.1 port, with a password, without persistence, in a temporary
// directory, stopped when the test ends. Tests skip when redis-server is
// not installed (.ci/install-deps installs it).
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Password is the password of the servers' default user.
const Password = "test-password"

// Server is one redis-server process.
type Server struct {
	Addr string // 127.0.0.1:PORT
	dir  string
	acl  string // ACL file, if any
	cmd  *exec.Cmd
	done chan struct{}
	logf string
}

// Options change how the server starts.
type Options struct {
	// ACLFile, if set, names an ACL file of users the server has besides
	// the default one, whose password is Password.
	ACLFile string
}

// Start starts a redis-server, or skips the test if there is none.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (apt-get install redis-server; .ci/install-deps does): the fleet tests need a real Redis")
	}
	s := &Server{dir: t.TempDir()}
	s.logf = filepath.Join(s.dir, "redis.log")
	if opts.ACLFile != "" {
		// With an ACL file, requirepass does not apply: the default user
		// (Do's) is added to it.
		acl, err := os.ReadFile(opts.ACLFile)
		if err != nil {
			t.Fatal(err)
		}
		s.acl = filepath.Join(s.dir, "users.acl")
		acl = append(acl, "\nuser default on >"+Password+" ~* &* +@all\n"...)
		if err := os.WriteFile(s.acl, acl, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = s.start(freePort(t)); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("starting redis-server: %v\n%s", err, s.Log())
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("redis-server log:\n%s", s.Log())
		}
	})
	return s
}

// Restart starts the server again on the same port, empty (nothing is
// persisted).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.start(s.Addr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarting redis-server on %s: %v\n%s", s.Addr, err, s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) start(addr string) error {
	_, port, _ := net.SplitHostPort(addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--requirepass", Password, "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--logfile", s.logf, "--daemonize", "no"}
	if s.acl != "" {
		args = append(args, "--aclfile", s.acl)
	}
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
	s.Addr = addr
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("redis-server exited at start")
		default:
		}
		// The server answering must be this one: another test's may have
		// taken the port meanwhile (this one then exits, unable to bind).
		if pid, err := processID(addr); err == nil && pid == s.cmd.Process.Pid {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("redis-server on %s did not answer", addr)
}

// Stop kills the server (SIGKILL: as a crash) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Log returns what the server logged.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logf)
	return string(b)
}

// Do sends one command as the default user and returns the first line of
// the reply.
func (s *Server) Do(command ...string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(resp("AUTH", Password)); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		return "", fmt.Errorf("AUTH: %q %v", line, err)
	}
	if _, err := c.Write(resp(command...)); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	return strings.TrimSpace(line), err
}

// processID asks the server at addr for its process ID (INFO server).
func processID(addr string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(append(resp("AUTH", Password), resp("INFO", "server")...)); err != nil {
		return 0, err
	}
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		return 0, fmt.Errorf("AUTH: %q %v", line, err)
	}
	head, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "$") {
		return 0, fmt.Errorf("INFO: %q %v", head, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(head[1:]))
	if err != nil || n < 0 || n > 1<<20 {
		return 0, fmt.Errorf("INFO: %q", head)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("INFO server names no process_id")
}

func resp(args ...string) []byte {
	b := fmt.Appendf(nil, "*%d\r\n", len(args))
	for _, a := range args {
		b = fmt.Appendf(b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
