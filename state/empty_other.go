//go:build !unix

package state

import (
	"errors"
	"os"
)

// emptyFile reports whether path is an existing empty file; bbolt would
// write a new store over it. (Unix systems also check that no process
// holds it, as one creating the store does.)
func emptyFile(path string) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return fi.Size() == 0, nil
}
