package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
)

// The reference server is the yardstick for the daemon: the least work a
// correct socketmap server can do per request over the same kind of
// connection (read one netstring, write one constant netstring, flush).
// It runs as a child process of its own, like the daemon, so that each
// one's CPU time can be read alone from /proc.

// referenceReply is the constant answer: the shortest valid policy reply.
const referenceReply = "6:OK may,"

// maxNetstring is the largest payload either side accepts; Postfix's
// socketmap client allows replies up to 100000 bytes.
const maxNetstring = 100000

var errMalformed = errors.New("malformed netstring")

// runReferenceServer serves the reference on addr until the process is
// killed. It is reached through the hidden -reference-server flag.
func runReferenceServer(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reference server:", err)
		return 1
	}
	err = serveReference(ln)
	fmt.Fprintln(os.Stderr, "reference server:", err)
	return 1
}

// serveReference accepts connections, one goroutine each, until ln is
// closed.
func serveReference(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go handleReference(c)
	}
}

func handleReference(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	bw := bufio.NewWriter(c)
	for {
		n, err := readLength(br)
		if err != nil {
			return
		}
		if _, err := br.Discard(n); err != nil {
			return
		}
		if b, err := br.ReadByte(); err != nil || b != ',' {
			return
		}
		bw.WriteString(referenceReply)
		if bw.Flush() != nil {
			return
		}
	}
}

// readLength reads a netstring's "LEN:" prefix. It works on the reader's
// buffer and does not allocate.
func readLength(br *bufio.Reader) (int, error) {
	digits, err := br.ReadSlice(':')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return 0, errMalformed
		}
		return 0, err
	}
	digits = digits[:len(digits)-1]
	if len(digits) == 0 || len(digits) > 6 {
		return 0, errMalformed
	}
	n := 0
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, errMalformed
		}
		n = n*10 + int(c-'0')
	}
	if n > maxNetstring {
		return 0, errMalformed
	}
	return n, nil
}
