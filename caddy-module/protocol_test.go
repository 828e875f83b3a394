package cerberus

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"testing"
)

// The shared vectors of bouncer-api (schema in PROTOCOL.md section 10).
type vectorFile struct {
	ProtocolVersion int      `json:"protocol_version"`
	Vectors         []vector `json:"vectors"`
}

type vector struct {
	Name         string         `json:"name"`
	Direction    string         `json:"direction"`
	Hex          string         `json:"hex"`
	Valid        bool           `json:"valid"`
	Decoded      *decodedFrame  `json:"decoded"`
	CanonicalHex string         `json:"canonical_hex"`
	EncodesFrom  []decodedFrame `json:"encodes_from"`
	Error        string         `json:"error"`
	ErrorCode    *int           `json:"error_code"`
	ErrorID      *uint32        `json:"error_id"`
}

type decodedFrame struct {
	Kind        string `json:"kind"`
	ID          uint32 `json:"id"`
	Addr        string `json:"addr"`
	Status      string `json:"status"`
	Remediation string `json:"remediation"`
	Flags       uint8  `json:"flags"`
	ExpiresInS  uint32 `json:"expires_in_s"`
	Origin      string `json:"origin"`
	Scenario    string `json:"scenario"`
	Type        string `json:"type"`
	Code        string `json:"code"`
	Message     string `json:"message"`
}

func loadVectors(t *testing.T) []vector {
	t.Helper()
	b, err := os.ReadFile("../bouncer-api/testdata/vectors.json")
	if err != nil {
		t.Fatalf("reading the shared vectors: %v", err)
	}
	var f vectorFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("parsing vectors.json: %v", err)
	}
	if f.ProtocolVersion != ProtocolVersion || len(f.Vectors) == 0 {
		t.Fatalf("vectors.json: version %d, %d vectors", f.ProtocolVersion, len(f.Vectors))
	}
	return f.Vectors
}

// request turns a decoded form into a Request.
func (d decodedFrame) request(t *testing.T) Request {
	t.Helper()
	switch d.Kind {
	case "ping":
		return Request{Kind: KindPing, ID: d.ID}
	case "lookup":
		a, err := netip.ParseAddr(d.Addr)
		if err != nil {
			t.Fatalf("bad addr %q: %v", d.Addr, err)
		}
		return Request{Kind: KindLookup, ID: d.ID, Addr: a}
	}
	t.Fatalf("unknown request kind %q", d.Kind)
	return Request{}
}

func lookupName[T interface{ String() string }](t *testing.T, name string, all []T) T {
	t.Helper()
	for _, v := range all {
		if v.String() == name {
			return v
		}
	}
	t.Fatalf("unknown name %q", name)
	var zero T
	return zero
}

// response turns a decoded form into a Response.
func (d decodedFrame) response(t *testing.T) Response {
	t.Helper()
	switch d.Kind {
	case "pong":
		return Response{Kind: KindPong, ID: d.ID}
	case "error":
		code := lookupName(t, d.Code, []ErrorCode{CodeBadVersion, CodeBadKind, CodeBadFrame, CodeBadFamily, CodeBusy, CodeInternal})
		return Response{Kind: KindError, ID: d.ID, Code: code, Message: d.Message}
	case "lookup":
		return Response{Kind: KindLookupAnswer, ID: d.ID, Answer: Answer{
			Status:      lookupName(t, d.Status, []Status{StatusOK, StatusNotReady}),
			Remediation: lookupName(t, d.Remediation, []Remediation{Allow, Ban, Captcha, Throttle, Other}),
			Flags:       d.Flags,
			ExpiresInS:  d.ExpiresInS,
			Origin:      d.Origin,
			Scenario:    d.Scenario,
			Type:        d.Type,
		}}
	}
	t.Fatalf("unknown response kind %q", d.Kind)
	return Response{}
}

// decode decodes input in the vector's direction, returning the frame as an any.
func decode(direction string, input []byte) (any, int, error) {
	if direction == "request" {
		return DecodeRequest(input)
	}
	return DecodeResponse(input)
}

func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			input, err := hex.DecodeString(v.Hex)
			if err != nil {
				t.Fatalf("bad hex: %v", err)
			}
			got, n, err := decode(v.Direction, input)

			if !v.Valid {
				if v.Error == "incomplete" {
					if !errors.Is(err, ErrIncomplete) || n != 0 {
						t.Fatalf("got (%v, %d), want ErrIncomplete consuming nothing", err, n)
					}
					return
				}
				var fe *FrameError
				if !errors.As(err, &fe) {
					t.Fatalf("got %+v, %v; want error %s", got, err, v.Error)
				}
				if fe.Reason != v.Error {
					t.Errorf("reason = %s, want %s", fe.Reason, v.Error)
				}
				if v.ErrorCode != nil && int(fe.WireCode()) != *v.ErrorCode {
					t.Errorf("wire code = %d, want %d", fe.WireCode(), *v.ErrorCode)
				}
				if v.ErrorID != nil && fe.ID != *v.ErrorID {
					t.Errorf("error id = %d, want %d", fe.ID, *v.ErrorID)
				}
				return
			}

			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if n != len(input) {
				t.Errorf("consumed %d of %d bytes", n, len(input))
			}
			want := v.CanonicalHex
			if want == "" {
				want = v.Hex
			}
			var encoded []byte
			if v.Direction == "request" {
				exp := v.Decoded.request(t)
				if got != exp {
					t.Errorf("decoded %+v, want %+v", got, exp)
				}
				encoded = AppendRequest(nil, exp)
				for _, from := range v.EncodesFrom {
					if e := hex.EncodeToString(AppendRequest(nil, from.request(t))); e != want {
						t.Errorf("encoding %+v gave %s, want %s", from, e, want)
					}
				}
			} else {
				exp := v.Decoded.response(t)
				if got != exp {
					t.Errorf("decoded %+v, want %+v", got, exp)
				}
				encoded = AppendResponse(nil, exp)
				for _, from := range v.EncodesFrom {
					if e := hex.EncodeToString(AppendResponse(nil, from.response(t))); e != want {
						t.Errorf("encoding encodes_from gave %s, want %s", e, want)
					}
				}
			}
			if e := hex.EncodeToString(encoded); e != want {
				t.Errorf("encoded %s, want %s", e, want)
			}
		})
	}
}

// Every vector fed one byte at a time asks for more bytes until the last one.
func TestVectorsByteByByte(t *testing.T) {
	for _, v := range loadVectors(t) {
		input, _ := hex.DecodeString(v.Hex)
		for i := 0; i < len(input); i++ {
			_, _, err := decode(v.Direction, input[:i])
			if errors.Is(err, ErrIncomplete) {
				continue
			}
			// A bad length prefix is rejected from its two bytes alone.
			var fe *FrameError
			if errors.As(err, &fe) && fe.Reason == "bad_length" && v.Error == "bad_length" && i >= 2 {
				break
			}
			t.Errorf("%s: prefix of %d bytes gave %v, want ErrIncomplete", v.Name, i, err)
			break
		}
	}
}

// Every kind, remediation, status, code and decoding error has a vector.
func TestVectorsCoverage(t *testing.T) {
	seen := map[string]bool{}
	for _, v := range loadVectors(t) {
		if !v.Valid {
			seen["error:"+v.Error] = true
			continue
		}
		d := v.Decoded
		seen[v.Direction+":"+d.Kind] = true
		seen["remediation:"+d.Remediation] = true
		seen["status:"+d.Status] = true
		seen["code:"+d.Code] = true
	}
	want := []string{"request:lookup", "request:ping", "response:lookup", "response:pong", "response:error"}
	for _, r := range []Remediation{Allow, Ban, Captcha, Throttle, Other} {
		want = append(want, "remediation:"+r.String())
	}
	for _, s := range []Status{StatusOK, StatusNotReady} {
		want = append(want, "status:"+s.String())
	}
	for c := CodeBadVersion; c <= CodeInternal; c++ {
		want = append(want, "code:"+c.String())
	}
	for _, e := range []string{"incomplete", "bad_length", "bad_version", "bad_kind", "truncated", "trailing_bytes", "bad_family", "bad_utf8", "bad_value"} {
		want = append(want, "error:"+e)
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("no vector for %s", w)
		}
	}
}

// Several frames in one buffer decode one after the other.
func TestDecodeConsumesOneFrameAtATime(t *testing.T) {
	buf := AppendResponse(nil, Response{Kind: KindPong, ID: 1})
	buf = AppendResponse(buf, Response{Kind: KindLookupAnswer, ID: 2, Answer: Answer{Remediation: Ban, Origin: "cscli"}})
	buf = append(buf, 0x00) // first byte of a third frame
	r1, n1, err := DecodeResponse(buf)
	if err != nil || r1.ID != 1 || n1 != 8 {
		t.Fatalf("first: %+v %d %v", r1, n1, err)
	}
	r2, n2, err := DecodeResponse(buf[n1:])
	if err != nil || r2.ID != 2 || r2.Answer.Origin != "cscli" {
		t.Fatalf("second: %+v %d %v", r2, n2, err)
	}
	if _, _, err := DecodeResponse(buf[n1+n2:]); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("third: %v, want ErrIncomplete", err)
	}
}

func TestEncodeReplacesInvalidUTF8(t *testing.T) {
	b := AppendResponse(nil, Response{Kind: KindLookupAnswer, ID: 3, Answer: Answer{Origin: "a\xffb"}})
	r, _, err := DecodeResponse(b)
	if err != nil || r.Answer.Origin != "a\uFFFDb" {
		t.Fatalf("got %+v, %v", r, err)
	}
}
