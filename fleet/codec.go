package fleet

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"
)

// What goes through Redis. Every value read from Redis is bounded and
// checked: a value that is too large or does not decode (damage, another
// release, someone else's keys) is counted, logged under a rate limit and
// ignored; it never stops the daemon nor weakens an answer.
//
// A findings value in a hash is the findings' version (when they were
// gathered, Unix nanoseconds, 8 bytes big-endian) and then the findings as
// the daemon encodes them for its state file. A pin value is a Record in
// JSON. A message on the channel is
//
//	kind (1 byte) | node id (nodeIDLen bytes) | key length (uvarint) | key | value
//
// with the value as in the hashes.

// Bounds of what is read from Redis.
const (
	maxKey      = 1024      // a destination key
	maxPinValue = 4 << 10   // a pin record
	maxFindings = 256 << 10 // a findings value
	maxMessage  = maxFindings + maxKey + 64
	nodeIDLen   = 16
)

// Kinds of message.
const (
	kindPin      byte = 'p'
	kindFindings byte = 'f'
)

var errBadValue = errors.New("value from Redis does not decode")

// encodeFindings is the hash value of findings data gathered at version.
func encodeFindings(version time.Time, data []byte) []byte {
	b := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint64(b, uint64(version.UnixNano()))
	return append(b, data...)
}

// decodeFindings splits a findings value; data aliases b.
func decodeFindings(b []byte) (version time.Time, data []byte, err error) {
	if len(b) <= 8 || len(b) > maxFindings+8 {
		return time.Time{}, nil, errBadValue
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b))), b[8:], nil
}

// decodeRecord decodes a pin value of key.
func decodeRecord(key string, b []byte) (Record, error) {
	var r Record
	if len(b) > maxPinValue || json.Unmarshal(b, &r) != nil {
		return Record{}, errBadValue
	}
	if (r.Verify != nil && (r.Verify.Key != key || r.Verify.Level != "verify")) ||
		(r.Encrypt != nil && (r.Encrypt.Key != key || r.Encrypt.Level != "encrypt")) {
		return Record{}, errBadValue
	}
	if r.Verify == nil && r.Encrypt == nil && r.Removed.IsZero() {
		return Record{}, errBadValue
	}
	return r, nil
}

func encodeRecord(r Record) []byte {
	b, _ := json.Marshal(r) // a Record always encodes
	return b
}

// message is one change on the channel.
type message struct {
	kind  byte
	node  string
	key   string
	value []byte
}

func (m message) encode() []byte {
	b := make([]byte, 0, 1+nodeIDLen+binary.MaxVarintLen64+len(m.key)+len(m.value))
	b = append(b, m.kind)
	b = append(b, m.node...)
	b = binary.AppendUvarint(b, uint64(len(m.key)))
	b = append(b, m.key...)
	return append(b, m.value...)
}

func decodeMessage(s string) (message, error) {
	if len(s) < 1+nodeIDLen+1 || len(s) > maxMessage {
		return message{}, errBadValue
	}
	m := message{kind: s[0], node: s[1 : 1+nodeIDLen]}
	rest := []byte(s[1+nodeIDLen:])
	n, w := binary.Uvarint(rest)
	if w <= 0 || n == 0 || n > maxKey || uint64(len(rest)-w) < n {
		return message{}, errBadValue
	}
	m.key = string(rest[w : w+int(n)])
	m.value = rest[w+int(n):]
	if m.kind != kindPin && m.kind != kindFindings {
		return message{}, errBadValue
	}
	return m, nil
}
