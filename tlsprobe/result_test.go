package tlsprobe

import "testing"

// A target keyed by a text takes it only when Key would build that very
// text, so a wrong text can never make a lookup read another target's
// results.
func TestTargetKeyedBy(t *testing.T) {
	for _, c := range []struct {
		t    Target
		text string
		ok   bool
	}{
		{Target{Name: "relay.example.net", Direct: true, Port: 587}, "[relay.example.net]:587", true},
		{Target{Name: "relay.example.net", Direct: true}, "[relay.example.net]", true},
		{Target{Name: "example.com", Port: 2525}, "example.com:2525", true},
		{Target{Name: "::1", Direct: true, Port: 25}, "[ipv6:::1]:25", false},
		{Target{Name: "relay.example.net", Direct: true, Port: 587}, "[relay.example.net]:588", false},
		{Target{Name: "relay.example.net", Direct: true, Port: 587}, "[relay.example.net]:5870", false},
		{Target{Name: "relay.example.net", Direct: true, Port: 587}, "relay.example.net:587", false},
		{Target{Name: "example.com"}, "example.co", false},
		{Target{Name: "example.com"}, "[example.com]", false},
		{Target{Name: "example.com", Port: 2525}, "example.com:25", false},
	} {
		built := c.t.Key()
		got := c.t.KeyedBy(c.text)
		if got.Key() != built {
			t.Errorf("%+v keyed by %q: Key %q, want %q (what it builds)", c.t, c.text, got.Key(), built)
		}
		if plain := !c.t.Direct && c.t.Port == 0; !plain && (got.key != "") != c.ok { // a plain name's key is its name
			t.Errorf("%+v keyed by %q: took it %v, want %v", c.t, c.text, got.key != "", c.ok)
		}
	}
}
