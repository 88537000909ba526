package dnsclient

import (
	"net/netip"
	"testing"
)

func TestIsPublic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", false}, // loopback
		{"127.255.255.254", false},
		{"::1", false},
		{"10.1.2.3", false}, // RFC 1918
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"192.168.1.1", false},
		{"100.64.0.1", false}, // CGNAT, RFC 6598
		{"100.127.255.254", false},
		{"169.254.169.254", false}, // link-local, cloud metadata
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"fc00::1", false}, // ULA
		{"fd12:3456:789a::1", false},
		{"224.0.0.1", false}, // multicast
		{"239.255.255.250", false},
		{"ff02::1", false},
		{"ff0e::1", false},
		{"ff01::1", false},
		{"0.0.0.0", false}, // unspecified
		{"::", false},
		{"0.1.2.3", false}, // "this network"
		{"255.255.255.255", false},
		{"240.0.0.1", false},
		{"198.18.0.1", false}, // benchmarking
		{"192.0.0.8", false},
		{"64:ff9b:1::1", false},
		{"100::1", false},
		{"::ffff:127.0.0.1", false}, // IPv4-mapped
		{"::ffff:10.0.0.1", false},
		{"::ffff:169.254.1.1", false},
		{"8.8.8.8", true},
		{"93.184.215.14", true},
		{"100.63.255.255", true}, // just below CGNAT
		{"100.128.0.0", true},    // just above
		{"172.32.0.1", true},
		{"::ffff:8.8.8.8", true},
		{"2001:4860:4860::8888", true},
		{"2a00:1450:4001:80b::200e", true},
	}
	for _, tt := range tests {
		if got := IsPublic(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("IsPublic(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if IsPublic(netip.Addr{}) {
		t.Error("IsPublic(zero Addr) = true")
	}
}

func TestAllLoopback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		servers []string
		want    bool
	}{
		{nil, false},
		{[]string{"127.0.0.1:53"}, true},
		{[]string{"127.0.0.53:53", "[::1]:53"}, true},
		{[]string{"127.0.0.1:53", "192.0.2.1:53"}, false},
		{[]string{"localhost:53"}, false}, // a name could resolve anywhere
		{[]string{"127.0.0.1"}, false},    // no port
	}
	for _, tc := range tests {
		if got := AllLoopback(tc.servers); got != tc.want {
			t.Errorf("AllLoopback(%q) = %v, want %v", tc.servers, got, tc.want)
		}
	}
}
