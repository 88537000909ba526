package rules

import (
	"net"
	"os"
	"strconv"
	"strings"
)

// maxKeyPrefix bounds state.redis.key_prefix: it starts every key.
const maxKeyPrefix = 64

// redis checks state.redis and reads its password file. Nothing here
// connects: a Redis that is down must not stop a daemon from starting
// (it answers alone until Redis is back), so only the file is checked.
func (c *compiler) redis(s *Settings, r RedisConfig) {
	path := func(key string) []any { return []any{"state", "redis", key} }
	for i, addr := range r.Addrs {
		host, port, err := net.SplitHostPort(addr)
		p, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
			c.errorf([]any{"state", "redis", "addrs", i}, "state.redis.addrs[%d]: %q is not host:port (write e.g. \"127.0.0.1:6379\")", i, addr)
		}
	}
	if len(r.Addrs) == 0 {
		if r.MasterName != "" {
			c.errorf(path("master_name"), "state.redis.master_name: set state.redis.addrs to the Sentinels' host:port addresses (e.g. [\"10.0.0.1:26379\", \"10.0.0.2:26379\"])")
		}
		if r.PasswordFile != "" || r.Username != "" || r.TLS {
			c.errorf(path("addrs"), "state.redis: no addrs: set state.redis.addrs (e.g. [\"127.0.0.1:6379\"]) or remove the other state.redis settings")
		}
	}
	switch {
	case r.KeyPrefix == "":
		c.errorf(path("key_prefix"), "state.redis.key_prefix: must not be empty: every daemon of a fleet writes under it (write \"tlspolicyd:\", the default)")
	case len(r.KeyPrefix) > maxKeyPrefix || strings.ContainsAny(r.KeyPrefix, " \t\r\n*?[]{}"):
		c.errorf(path("key_prefix"), "state.redis.key_prefix: %q: write at most %d characters without spaces, glob characters (*?[]) or braces, ending in \":\" (e.g. \"tlspolicyd:\")", r.KeyPrefix, maxKeyPrefix)
	}
	rs := RedisSettings{Addrs: r.Addrs, MasterName: r.MasterName, Username: r.Username, TLS: r.TLS, KeyPrefix: r.KeyPrefix}
	if f := r.PasswordFile; f != "" {
		data, err := os.ReadFile(f)
		switch {
		case err != nil:
			c.errorf(path("password_file"), "state.redis.password_file: %v (make it readable by the user the daemon runs as)", err)
		case strings.TrimSpace(string(data)) == "":
			c.errorf(path("password_file"), "state.redis.password_file: %s holds no password (write the password of the Redis user in it)", f)
		default:
			rs.Password = strings.TrimSpace(string(data))
		}
	}
	s.Redis = rs
}
