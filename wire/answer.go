package wire

import "context"

// Status is the outcome of a table lookup, independent of the wire format
// that carries it.
type Status uint8

const (
	// StatusOK: Text is the value (a Postfix policy, a transport route).
	StatusOK Status = iota
	// StatusNotFound: the table has no entry for the key.
	StatusNotFound
	// StatusTemp: a temporary failure; Postfix defers the mail. Text says why.
	StatusTemp
	// StatusPerm: a permanent failure (unknown map, malformed request). Text says why.
	StatusPerm
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusNotFound:
		return "notfound"
	case StatusTemp:
		return "temp"
	case StatusPerm:
		return "perm"
	}
	return "unknown"
}

// Answer is the result of one table lookup. For the hot path Text is a
// string prepared when the rules were loaded, so answering allocates nothing.
type Answer struct {
	Status Status
	Text   string
	// Label is what tlspolicyd_answers_total counts the answer under: the
	// level answered, or "route", "notfound", "error"; "" is not counted.
	// It comes from a small fixed set, never from the request.
	Label string
}

// PostfixTCPTableReplyMax is the longest tcp_table(5) reply line that
// Postfix reads, newline included (DICT_TCP_MAXLEN in its dict_tcp.c). On
// a longer line it logs "text longer than 4096", reconnects, tries up to
// ten times and then defers the mail, whatever this daemon's own limit.
const PostfixTCPTableReplyMax = 4096

// FitsEveryTable reports whether text, as the value of an OK answer, fits
// the reply of every Postfix table type the daemon serves, as Postfix
// reads it: a socketmap reply ("OK " and text) of at most MaxNetstringLen
// bytes, and a tcp_table reply line ("200 ", text %XX-quoted, newline) of
// at most PostfixTCPTableReplyMax bytes. The engine keeps an answer with
// optional attributes within it, so that no table type defers mail
// because of them.
func FitsEveryTable(text string) bool {
	if len("OK ")+len(text) > MaxNetstringLen {
		return false
	}
	n := len("200 \n")
	for i := 0; i < len(text) && n <= PostfixTCPTableReplyMax; i++ {
		if hexQuoted(text[i]) {
			n += 3
		} else {
			n++
		}
	}
	return n <= PostfixTCPTableReplyMax
}

// RcptChecker makes the RCPT-time decision ("may mail from sender go to
// recipient?") and renders it as a Postfix access(5) action: ActionDunno,
// "REJECT 5.7.10 ...", "DEFER_IF_PERMIT 4.7.10 ...", "FILTER ...". The
// daemon's engine is behind it; the delegation and Exim codecs call it.
type RcptChecker interface {
	RcptAction(ctx context.Context, sender, recipient string) string
}

// ActionDunno is the access(5) action that lets a recipient through.
const ActionDunno = "DUNNO"

// TableLookup answers Postfix table lookups: mapName is the socketmap name
// ("tlspolicy", a class name, "transport"); key is the raw key Postfix sent,
// in the codec's buffer: valid only during the call, never retained, so
// that a codec passes it without copying. The engine implements it; the
// wire codecs call it.
type TableLookup interface {
	LookupTable(ctx context.Context, mapName string, key []byte) Answer
}
