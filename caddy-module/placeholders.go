package cerberus

// The placeholders `{http.cerberus.*}` of a request, given to Caddy's replacer as a
// provider (Replacer.Map) that answers from the request's Answer when a placeholder
// is read. Setting five static values (Replacer.Set) instead took a lock, a map
// write and an allocation each on every request, read or not: about 0.8 us and 3
// allocations (BenchmarkServeHTTPMapped). An allow with nothing to say costs none.
//
// Providers answer after the replacer's static values, so a Set wins over them: the
// failure path and AppSec's refusal, which come after the IP answer, use Set. Of
// two cerberus handlers in one request the first's provider answers; both looked up
// the same address in the same snapshot, and a refusal stops the request at the first.

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

const placeholderPrefix = "http.cerberus."

// setPlaceholders makes repl answer the placeholders of ans.
func setPlaceholders(repl *caddy.Replacer, ans Answer) {
	if ans.Remediation == Allow && ans.ExpiresInS == 0 && ans.Origin == "" && ans.Scenario == "" && ans.Type == "" {
		repl.Map(plainAllow)
		return
	}
	repl.Map(func(key string) (any, bool) { return placeholder(ans, key) })
}

// plainAllow answers the placeholders of an allow that no decision is behind.
func plainAllow(key string) (any, bool) {
	return placeholder(Answer{}, key)
}

// placeholder is the value of key for a, if key is one of ours.
func placeholder(a Answer, key string) (any, bool) {
	name, ok := strings.CutPrefix(key, placeholderPrefix)
	if !ok {
		return nil, false
	}
	switch name {
	case "remediation":
		return a.Remediation.String(), true
	case "origin":
		return a.Origin, true
	case "scenario":
		return a.Scenario, true
	case "type":
		return a.Type, true
	case "expires_in_s":
		return strconv.FormatUint(uint64(a.ExpiresInS), 10), true
	}
	return nil, false
}
