package cerberus

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("cerberus", parseCaddyfile)
	// Ask the daemon before any handler that may answer or route the request
	// (basic_auth, forward_auth, handle, route, respond, reverse_proxy,
	// file_server, ...), so that no `order` line is needed. Placing it just before
	// reverse_proxy would let respond, handle and route blocks answer first.
	httpcaddyfile.RegisterDirectiveOrder("cerberus", httpcaddyfile.Before, "basic_auth")
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	cerberus [<matcher>] {
//		socket      <path>            # default /run/cerberus/cerberus.sock
//		timeout     <duration>        # default 20ms
//		fail        open|closed       # default open
//		connections <n>               # default 4
//		errors                        # refusals become Caddy HTTP errors
//		ban_template <file>           # html/template page of a refusal
//		snapshot_dir <dir>|off        # default: the socket's directory + /snapshot
//		appsec      on|off            # default on (AppSec through the daemon)
//		appsec_max_body <bytes>       # default 1048576
//	}
//
// Every subdirective is optional; `cerberus` alone uses the defaults.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		sub := d.Val()
		if sub == "errors" {
			if d.NextArg() {
				return d.Errf("errors takes no argument")
			}
			h.Errors = true
			continue
		}
		var arg string
		if !d.Args(&arg) {
			return d.ArgErr()
		}
		if d.NextArg() {
			return d.Errf("%s takes one argument", sub)
		}
		switch sub {
		case "socket":
			h.Socket = arg
		case "timeout":
			dur, err := caddy.ParseDuration(arg)
			if err != nil {
				return d.Errf("bad timeout %q: %v", arg, err)
			}
			if dur <= 0 {
				return d.Errf("timeout must be positive, got %q", arg)
			}
			h.Timeout = caddy.Duration(dur)
		case "fail":
			if arg != FailOpen && arg != FailClosed {
				return d.Errf("fail must be open or closed, got %q", arg)
			}
			h.Fail = arg
		case "ban_template":
			h.BanTemplate = arg
		case "snapshot_dir":
			h.SnapshotDir = arg
		case "appsec":
			if arg != "on" && arg != "off" {
				return d.Errf("appsec must be on or off, got %q", arg)
			}
			h.Appsec = arg
		case "appsec_max_body":
			n, err := strconv.Atoi(arg)
			if err != nil || n < 0 || n > 16<<20 {
				return d.Errf("appsec_max_body must be a number of bytes from 0 to 16777216, got %q", arg)
			}
			h.AppsecMaxBody = n
		case "connections":
			n, err := strconv.Atoi(arg)
			if err != nil || n < 1 {
				return d.Errf("connections must be a positive integer, got %q", arg)
			}
			h.Connections = n
		default:
			return d.Errf("unrecognized cerberus subdirective %q", sub)
		}
	}
	return nil
}

// parseCaddyfile builds the handler for the `cerberus` directive.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}
