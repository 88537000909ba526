//go:build unix

package state

import (
	"errors"
	"os"
	"syscall"
)

// emptyFile reports whether path is an existing empty file that no process
// holds. bbolt writes a new store over an empty file, so one left empty by
// truncation would start as a store without pins; but a store another
// process is creating is empty too, for the moment between creating the
// file and writing it, which it does holding the lock that is tried here.
func emptyFile(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // created as a new store
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return false, nil // held: opening it waits for the lock, or says it is in use
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	return fi.Size() == 0, nil
}
