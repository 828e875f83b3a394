package cerberus

// Fuzz targets for the protocol decoder (go test -fuzz). The seed corpus is every
// vector of bouncer-api/testdata/vectors.json; `go test` alone runs the seeds, and
// `go test -run '^$' -fuzz FuzzDecodeResponse -fuzztime 5s` fuzzes (scripts/test.sh
// runs each target a few seconds; README.md "Fuzzing" has the longer run).

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"
)

// addVectorSeeds adds the bytes of every shared vector to the corpus.
func addVectorSeeds(f *testing.F) {
	b, err := os.ReadFile("../bouncer-api/testdata/vectors.json")
	if err != nil {
		f.Fatalf("reading the shared vectors: %v", err)
	}
	var file struct {
		Vectors []struct {
			Name string `json:"name"`
			Hex  string `json:"hex"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(b, &file); err != nil {
		f.Fatalf("parsing vectors.json: %v", err)
	}
	if len(file.Vectors) == 0 {
		f.Fatal("vectors.json holds no vectors")
	}
	for _, v := range file.Vectors {
		raw, err := hex.DecodeString(v.Hex)
		if err != nil {
			f.Fatalf("vector %s: bad hex: %v", v.Name, err)
		}
		f.Add(raw)
	}
}

// checkDecode checks what every decoder promises for buf: a decoded frame consumed
// n bytes (0 < n <= len(buf)) and decodes the same from buf[:n] alone, every shorter
// prefix of it is incomplete, and anything else is ErrIncomplete or a *FrameError.
// It returns the decoded value and whether there was one.
func checkDecode[T comparable](t *testing.T, buf []byte, decode func([]byte) (T, int, error)) (T, bool) {
	v, n, err := decode(buf)
	if err != nil {
		var fe *FrameError
		if !errors.Is(err, ErrIncomplete) && !errors.As(err, &fe) {
			t.Fatalf("error of an unknown kind: %T %v", err, err)
		}
		if n != 0 {
			t.Fatalf("an error consumed %d bytes", n)
		}
		return v, false
	}
	if n <= 0 || n > len(buf) {
		t.Fatalf("consumed %d of %d bytes", n, len(buf))
	}
	again, m, err := decode(buf[:n])
	if err != nil || m != n || again != v {
		t.Fatalf("the frame alone decodes to %+v, %d, %v; in the buffer to %+v, %d", again, m, err, v, n)
	}
	for i := 0; i < n; i++ {
		if _, _, err := decode(buf[:i]); !errors.Is(err, ErrIncomplete) {
			t.Fatalf("a %d-byte prefix of a %d-byte frame: %v, want ErrIncomplete", i, n, err)
		}
	}
	return v, true
}

func FuzzDecodeRequest(f *testing.F) {
	addVectorSeeds(f)
	f.Fuzz(func(t *testing.T, buf []byte) {
		r, ok := checkDecode(t, buf, DecodeRequest)
		if !ok {
			return
		}
		if r.Kind == KindLookup && (!r.Addr.IsValid() || r.Addr.Is4In6()) {
			t.Fatalf("lookup of %v: want a valid, unmapped address", r.Addr)
		}
		out := AppendRequest(nil, r)
		back, n, err := DecodeRequest(out)
		if err != nil || n != len(out) || back != r {
			t.Fatalf("%+v re-encodes to %x, which decodes to %+v, %d, %v", r, out, back, n, err)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	addVectorSeeds(f)
	f.Fuzz(func(t *testing.T, buf []byte) {
		r, ok := checkDecode(t, buf, DecodeResponse)
		if !ok {
			return
		}
		// A decoded response holds valid UTF-8 within the limits, so it re-encodes
		// as it is (cut changes nothing).
		out := AppendResponse(nil, r)
		back, n, err := DecodeResponse(out)
		if err != nil || n != len(out) || back != r {
			t.Fatalf("%+v re-encodes to %x, which decodes to %+v, %d, %v", r, out, back, n, err)
		}
	})
}
