package tmtp

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// referenceTest is the deployed server's transcript test (SPEC.md's
// reference-test.json), relative to this package.
var referenceTest = filepath.Join("..", "..", "..", "shared", "tmtp", "reference-test.json")

// refStep is the part of a reference-test step that concerns the wire format.
type refStep struct {
	Head map[string]any `json:"head"`
	Data *string        `json:"data"`
	Datb []byte         `json:"-"`
	Msg  *string        `json:"msg"`
	Want []struct {
		Error string `json:"error"`
		Op    string `json:"op"`
	} `json:"want"`
}

// refOps maps the transcript's op names to numbers (reference-test.md).
var refOps = map[string]Op{
	"eOpTmtpRev": OpTmtpRev, "eOpRegister": OpRegister, "eOpLogin": OpLogin,
	"eOpUserEdit": OpUserEdit, "eOpOhiEdit": OpOhiEdit, "eOpGroupInvite": OpGroupInvite,
	"eOpGroupEdit": OpGroupEdit, "eOpPost": OpPost, "eOpPostNotify": OpPostNotify,
	"eOpPing": OpPing, "eOpAck": OpAck, "eOpPulse": OpPulse, "eOpQuit": OpQuit,
}

// quitOf returns the reason of the quit a step expects, or "".
func (s *refStep) quitOf() string {
	for _, w := range s.Want {
		if w.Op == "quit" {
			return w.Error
		}
	}
	return ""
}

func loadReference(t *testing.T) []refStep {
	b, err := os.ReadFile(referenceTest)
	if errors.Is(err, os.ErrNotExist) && os.Getenv("MNM_REQUIRE_SHARED") != "1" {
		t.Skipf("%s absent; set MNM_REQUIRE_SHARED=1 to require it", referenceTest)
	}
	if err != nil {
		t.Fatal(err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	steps := make([]refStep, len(raw))
	for i, r := range raw {
		d := json.NewDecoder(bytes.NewReader(r))
		d.UseNumber()
		if err := d.Decode(&steps[i]); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		var datb struct{ Datb []int }
		json.Unmarshal(r, &datb)
		for _, c := range datb.Datb {
			steps[i].Datb = append(steps[i].Datb, byte(c))
		}
	}
	return steps
}

// TestReference reads every frame the transcript sends and checks the quits
// that the wire format decides: invalid header length, invalid header, and
// the ping text limits.
func TestReference(t *testing.T) {
	steps := loadReference(t)
	heads := 0
	checked := map[string]int{} // quits checked, by reason
	for i, s := range steps {
		quit := s.quitOf()
		switch {
		case s.Head != nil:
			heads++
			name, _ := s.Head["Op"].(string)
			op, ok := refOps[name]
			if !ok {
				t.Fatalf("step %d: op %v", i, s.Head["Op"])
			}
			s.Head["Op"] = op
			hb, err := json.Marshal(s.Head)
			if err != nil {
				t.Fatal(err)
			}
			data := s.Datb
			if s.Data != nil {
				data = []byte(*s.Data)
			}
			r := NewReader(io.MultiReader(strings.NewReader(frame(string(hb), "")), bytes.NewReader(data)))
			h, err := r.Next()
			if quit == QuitHeader {
				wantReason(t, "step "+string(hb), err, QuitHeader)
				checked[quit]++
				continue
			}
			if err != nil {
				t.Errorf("step %d %s: %v", i, hb, err)
				continue
			}
			if h.Op != op {
				t.Errorf("step %d: op %d, want %d", i, h.Op, op)
			}
			got, _ := io.ReadAll(r.Data(h.Datalen))
			if (op == OpPing || op == OpGroupInvite) && int64(len(got)) == h.Datalen {
				err := CheckPing(got)
				switch quit {
				case QuitDataTooLong, QuitNotUTF8:
					wantReason(t, "step "+string(hb), err, quit)
					checked[quit]++
				default:
					if err != nil {
						t.Errorf("step %d %s: CheckPing: %v", i, hb, err)
					}
				}
			}
			if h.Datalen == 0 && len(data) > 0 {
				// Data after a header without datalen is a pipelined frame.
				h, err := r.Next()
				if err != nil {
					t.Errorf("step %d: pipelined frame: %v", i, err)
				} else if d, _ := io.ReadAll(r.Data(h.Datalen)); int64(len(d)) != h.Datalen {
					t.Errorf("step %d: pipelined frame: %d of %d octets", i, len(d), h.Datalen)
				}
			}
		case s.Msg != nil && (quit == QuitHeaderLength || quit == QuitHeader):
			_, err := NewReader(strings.NewReader(*s.Msg)).Next()
			wantReason(t, "step "+*s.Msg, err, quit)
			checked[quit]++
		}
	}
	// What the transcript held when this test was written: a change means
	// the steps are no longer read as intended.
	want := map[string]int{QuitHeaderLength: 1, QuitHeader: 3, QuitDataTooLong: 1, QuitNotUTF8: 1}
	if heads != 38 || !maps.Equal(checked, want) {
		t.Errorf("read %d headers and checked quits %v, want 38 and %v", heads, checked, want)
	}
}
