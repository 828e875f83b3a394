// Command caddy is Caddy with its standard modules and the cerberus handler
// (http.handlers.cerberus). Build it with scripts/build-caddy.sh.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/cerberus-bouncer/cerberus/caddy-module"
)

func main() {
	caddycmd.Main()
}
