package wire

import (
	"strings"
	"testing"
)

// FitsEveryTable is exact at the tcp_table limit Postfix reads, counting
// each byte as the codec quotes it, and agrees with the codecs' own
// replies.
func TestFitsEveryTable(t *testing.T) {
	t.Parallel()
	const room = PostfixTCPTableReplyMax - len("200 \n")
	for _, tt := range []struct {
		text string
		want bool
	}{
		{"secure match=mx.example.com", true},
		{strings.Repeat("a", room), true},
		{strings.Repeat("a", room+1), false},
		{strings.Repeat(" ", room/3), true}, // a space is sent as %20
		{strings.Repeat(" ", room/3+1), false},
		{strings.Repeat("a", room-3) + "%", true},
		{strings.Repeat("a", room-2) + "%", false},
		{strings.Repeat("é", room/6), true}, // two bytes, each sent as %XX
		{strings.Repeat("é", room/6+1), false},
	} {
		if got := FitsEveryTable(tt.text); got != tt.want {
			t.Errorf("FitsEveryTable(%d bytes %.10q...) = %v, want %v", len(tt.text), tt.text, got, tt.want)
		}
		line, _ := appendTCPTableReply(nil, Answer{Status: StatusOK, Text: tt.text})
		if fits := len(line) <= PostfixTCPTableReplyMax; fits != tt.want {
			t.Errorf("%d bytes %.10q...: tcp_table reply of %d bytes, FitsEveryTable %v", len(tt.text), tt.text, len(line), tt.want)
		}
		if reply, result := appendSocketmapReply(nil, Answer{Status: StatusOK, Text: tt.text}); tt.want && result != resultOf(StatusOK) {
			t.Errorf("%d bytes: socketmap reply %.20q", len(tt.text), reply)
		}
	}
	if FitsEveryTable(strings.Repeat("a", MaxNetstringLen)) {
		t.Error("a text over the socketmap limit fits")
	}
}
