package cerberus

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Handler
	}{
		{"bare", `cerberus`, Handler{}},
		{"empty block", "cerberus {\n}", Handler{}},
		{"all", `cerberus {
			socket /var/lib/cerberus/cerberus.sock
			timeout 50ms
			fail closed
			connections 8
		}`, Handler{Socket: "/var/lib/cerberus/cerberus.sock", Timeout: caddy.Duration(50 * time.Millisecond), Fail: "closed", Connections: 8}},
		{"fail open", "cerberus {\nfail open\n}", Handler{Fail: "open"}},
		{"errors and ban_template", "cerberus {\nerrors\nban_template /etc/caddy/ban.html\n}", Handler{Errors: true, BanTemplate: "/etc/caddy/ban.html"}},
		{"timeout in seconds", "cerberus {\ntimeout 1s\n}", Handler{Timeout: caddy.Duration(time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)); err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if h.Socket != tt.want.Socket || h.Timeout != tt.want.Timeout || h.Fail != tt.want.Fail || h.Connections != tt.want.Connections ||
				h.Errors != tt.want.Errors || h.BanTemplate != tt.want.BanTemplate {
				t.Errorf("got %+v, want %+v", h, tt.want)
			}
		})
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  string
	}{
		{"argument on the directive", `cerberus /run/cerberus.sock`, "wrong argument count"},
		{"unknown subdirective", "cerberus {\nsockets /x\n}", `unrecognized cerberus subdirective "sockets"`},
		{"socket without path", "cerberus {\nsocket\n}", "wrong argument count"},
		{"socket with two paths", "cerberus {\nsocket /a /b\n}", "socket takes one argument"},
		{"bad timeout", "cerberus {\ntimeout soon\n}", `bad timeout "soon"`},
		{"zero timeout", "cerberus {\ntimeout 0s\n}", "timeout must be positive"},
		{"negative timeout", "cerberus {\ntimeout -5ms\n}", "timeout must be positive"},
		{"bad fail", "cerberus {\nfail sometimes\n}", `fail must be open or closed, got "sometimes"`},
		{"fail without value", "cerberus {\nfail\n}", "wrong argument count"},
		{"connections zero", "cerberus {\nconnections 0\n}", "connections must be a positive integer"},
		{"errors with an argument", "cerberus {\nerrors yes\n}", "errors takes no argument"},
		{"ban_template without path", "cerberus {\nban_template\n}", "wrong argument count"},
		{"connections not a number", "cerberus {\nconnections many\n}", "connections must be a positive integer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// Caddyfiles adapted to JSON as `caddy adapt` would, compared with golden files in
// testdata/ (rewrite them with `go test -run TestAdapt -update`).
func TestAdaptCaddyfile(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.caddyfile")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no testdata/*.caddyfile: %v", err)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, in := range inputs {
		t.Run(filepath.Base(in), func(t *testing.T) {
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			out, warnings, err := adapter.Adapt(src, map[string]any{"filename": in})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			for _, w := range warnings {
				t.Errorf("warning: %s", w.String())
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, out, "", "\t"); err != nil {
				t.Fatal(err)
			}
			pretty.WriteByte('\n')
			golden := strings.TrimSuffix(in, ".caddyfile") + ".json"
			if *update {
				if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (create it with -update)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Errorf("adapted JSON differs from %s:\n%s", golden, pretty.String())
			}
		})
	}
}

// Without any `order` line, cerberus runs before every handler that may answer the
// request; an explicit `order` line still works.
func TestDirectiveOrder(t *testing.T) {
	site := `:8080 {
	file_server
	reverse_proxy /api/* 127.0.0.1:9000
	respond /hello "hello"
	handle /admin/* {
		respond "admin"
	}
	basic_auth /private/* {
		bob $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG
	}
	cerberus
}`
	tests := []struct {
		name   string
		global string
		before []string // handlers cerberus must precede
	}{
		{"registered order", "", []string{"authentication", "subroute", "static_response", "reverse_proxy", "file_server"}},
		{"order before reverse_proxy", "{\n\torder cerberus before reverse_proxy\n}\n", []string{"reverse_proxy", "file_server"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tt.global+site), nil)
			if err != nil {
				t.Fatal(err)
			}
			s := string(out)
			c := strings.Index(s, `"handler":"cerberus"`)
			for _, other := range tt.before {
				if o := strings.Index(s, `"handler":"`+other+`"`); c < 0 || o < 0 || c > o {
					t.Errorf("cerberus at %d, %s at %d in %s", c, other, o, s)
				}
			}
		})
	}
}

// Adapter errors from bad Caddyfile input carry the file and line.
func TestAdaptCaddyfileErrors(t *testing.T) {
	src := []byte(":8080 {\n\tcerberus {\n\t\tfail never\n\t}\n}\n")
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile"})
	if err == nil || !strings.Contains(err.Error(), "Caddyfile:3") || !strings.Contains(err.Error(), "fail must be open or closed") {
		t.Fatalf("got %v", err)
	}
}

// The example shipped in examples/ adapts without error or warning.
func TestExampleCaddyfileAdapts(t *testing.T) {
	src, err := os.ReadFile("../examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "examples/Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("warning: %s", w.String())
	}
	if !strings.Contains(string(out), `"handler":"cerberus"`) {
		t.Errorf("no cerberus handler in %s", out)
	}
}
