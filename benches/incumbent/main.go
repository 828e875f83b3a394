// Caddy with the standard modules and the incumbent CrowdSec bouncer
// (github.com/hslatman/caddy-crowdsec-bouncer), built only for the comparison
// benchmark benches/caddy_compare.sh. Build: go build -o bin/caddy .
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/hslatman/caddy-crowdsec-bouncer/crowdsec"
	_ "github.com/hslatman/caddy-crowdsec-bouncer/http"
)

func main() {
	caddycmd.Main()
}
