package tmtp

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// wantReason fails unless err is a *ProtocolError with the given reason.
func wantReason(t *testing.T, what string, err error, reason string) {
	t.Helper()
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		t.Errorf("%s: err = %v, want ProtocolError %q", what, err, reason)
		return
	}
	if pe.Reason != reason {
		t.Errorf("%s: reason = %q (%v), want %q", what, pe.Reason, err, reason)
	}
}

func mustParse(t *testing.T, s string) *Header {
	t.Helper()
	h, err := ParseHeader([]byte(s))
	if err != nil {
		t.Fatalf("ParseHeader(%s): %v", s, err)
	}
	return h
}

func TestParseHeaderFields(t *testing.T) {
	// The deployed client's spelling of a PostNotify (reference test), plus
	// notefor.
	h := mustParse(t, `{"Op":8, "Id":"id", "Datalen":14, "Datahead":5, "Datasum":5,
		"For":[{"Id":"u1", "Type":1}], "Fornotself":true,
		"Notelen":5, "Notehead":1, "Notesum":18446744073709551615,
		"Notefor":[{"Id":"g1","Type":2},{"Id":"g2","Type":3}]}`)
	want := &Header{
		Op: OpPostNotify, ID: "id", Datalen: 14, Datahead: 5, Datasum: 5,
		For: []Recipient{{"u1", 1}}, Fornotself: true,
		Notelen: 5, Notehead: 1, Notesum: 1<<64 - 1,
		Notefor: []Recipient{{"g1", 2}, {"g2", 3}},
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("got %+v\nwant %+v", h, want)
	}

	h = mustParse(t, `{"Op":1,"NewNode":"blue","NewAlias":"LongJohn Silver","Oidc":"tok"}`)
	if h.Op != OpRegister || h.NewNode != "blue" || h.NewAlias != "LongJohn Silver" || h.Oidc != "tok" {
		t.Errorf("register: %+v", h)
	}
	h = mustParse(t, `{"Op":2,"Uid":"u100002","Node":"LB27ML46"}`)
	if h.UID != "u100002" || h.Node != "LB27ML46" {
		t.Errorf("login: %+v", h)
	}
	h = mustParse(t, `{"Op":6,"Id":"0","Gid":"talktalk","Act":"alias","Newalias":"test11"}`)
	if h.Gid != "talktalk" || h.Act != "alias" || h.NewAlias != "test11" {
		t.Errorf("groupedit: %+v", h)
	}
	h = mustParse(t, `{"Op":5,"Id":"0","Gid":"talktalk","Datalen":5,"From":"test1","To":"test2"}`)
	if h.From != "test1" || h.To != "test2" || h.Datalen != 5 {
		t.Errorf("groupinvite: %+v", h)
	}
	// OhiEdit elements carry only an id.
	h = mustParse(t, `{"Op":4,"Id":"0","For":[{"Id":"u100003"}],"Type":"init"}`)
	if !reflect.DeepEqual(h.For, []Recipient{{ID: "u100003"}}) || h.Type != "init" {
		t.Errorf("ohiedit: %+v", h)
	}
}

// TestParseHeaderExtensions: the fields of the extensions, in the deployed
// client's key case, and what their values mean.
func TestParseHeaderExtensions(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Header
	}{
		{`{"Op":0,"Id":"1","Ext":1}`, Header{Op: OpTmtpRev, ID: "1", Ext: true}},
		{`{"Op":0,"Id":"1","Ext":false}`, Header{Op: OpTmtpRev, ID: "1", Ext: true}},
		{`{"Op":0,"Id":"1","Ext":["aliasonce"]}`, Header{Op: OpTmtpRev, ID: "1", Ext: true}},
		{`{"Op":0,"Id":"1","Ext":null}`, Header{Op: OpTmtpRev, ID: "1"}},
		{`{"Op":0,"Id":"1","ext":1,"EXT":null}`, Header{Op: OpTmtpRev, ID: "1", Ext: true}},
		{`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":1}`, Header{Op: OpUserEdit, ID: "0", NewAlias: "sam walker", Once: true}},
		{`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":true}`, Header{Op: OpUserEdit, ID: "0", NewAlias: "sam walker", Once: true}},
		{`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":0}`, Header{Op: OpUserEdit, ID: "0", NewAlias: "sam walker"}},
		{`{"Op":3,"Id":"0","NewAlias":"sam walker","once":1,"Once":false}`, Header{Op: OpUserEdit, ID: "0", NewAlias: "sam walker"}},
		{`{"Op":3,"Id":"0","NewAlias":"sam walker","once":1,"Once":null}`, Header{Op: OpUserEdit, ID: "0", NewAlias: "sam walker", Once: true}},
		{`{"Op":3,"Id":"0","ListOnce":1}`, Header{Op: OpUserEdit, ID: "0", ListOnce: true}},
		{`{"Op":3,"Id":"0","DropAlias":"sam walker"}`, Header{Op: OpUserEdit, ID: "0", DropAlias: "sam walker"}},
		{`{"Op":3,"Id":"0","DropAlias":"sam\u0020walker"}`, Header{Op: OpUserEdit, ID: "0", DropAlias: "sam walker"}},
		// Unknown before the extension, ignored on other ops as then.
		{`{"Op":9,"Id":"x","From":"a","To":"b","Once":1,"ListOnce":1,"DropAlias":"c"}`, Header{Op: OpPing, ID: "x", From: "a", To: "b", Once: true, ListOnce: true, DropAlias: "c"}},
		// The "block" extension's.
		{`{"Op":3,"Id":"0","Block":"sam walker"}`, Header{Op: OpUserEdit, ID: "0", Block: "sam walker"}},
		{`{"Op":3,"Id":"0","Unblock":"UID0UID0"}`, Header{Op: OpUserEdit, ID: "0", Unblock: "UID0UID0"}},
		{`{"Op":3,"Id":"0","ListBlock":1}`, Header{Op: OpUserEdit, ID: "0", ListBlock: true}},
		{`{"Op":3,"Id":"0","ListBlock":true,"Block":""}`, Header{Op: OpUserEdit, ID: "0", ListBlock: true}},
		{`{"Op":3,"Id":"0","NewNode":"ref","ListBlock":0,"Unblock":null}`, Header{Op: OpUserEdit, ID: "0", NewNode: "ref"}},
		{`{"Op":3,"Id":"0","listblock":1,"ListBlock":null}`, Header{Op: OpUserEdit, ID: "0", ListBlock: true}},
		{`{"Op":9,"Id":"x","From":"a","To":"b","Block":"c","Unblock":"d","ListBlock":1}`, Header{Op: OpPing, ID: "x", From: "a", To: "b", Block: "c", Unblock: "d", ListBlock: true}},
		// The "revoke" extension's.
		{`{"Op":3,"Id":"0","ListNode":1}`, Header{Op: OpUserEdit, ID: "0", ListNode: true}},
		{`{"Op":3,"Id":"0","listnode":true,"DropNode":""}`, Header{Op: OpUserEdit, ID: "0", ListNode: true}},
		{`{"Op":3,"Id":"0","DropNode":"7"}`, Header{Op: OpUserEdit, ID: "0", DropNode: "7"}},
		// Not a number: the server's ack error, not the parser's.
		{`{"Op":3,"Id":"0","dropnode":"x"}`, Header{Op: OpUserEdit, ID: "0", DropNode: "x"}},
		{`{"Op":3,"Id":"0","NewNode":"ref","ListNode":0,"DropNode":null}`, Header{Op: OpUserEdit, ID: "0", NewNode: "ref"}},
		{`{"Op":9,"Id":"x","From":"a","To":"b","ListNode":1,"DropNode":"1"}`, Header{Op: OpPing, ID: "x", From: "a", To: "b", ListNode: true, DropNode: "1"}},
		// The "opengroup" extension's.
		{`{"Op":6,"Id":"0","Act":"open","Gid":"g"}`, Header{Op: OpGroupEdit, ID: "0", Act: "open", Gid: "g"}},
		{`{"Op":6,"Id":"0","Act":"open","Gid":"g","Post":1}`, Header{Op: OpGroupEdit, ID: "0", Act: "open", Gid: "g", Post: true}},
		{`{"Op":6,"Id":"0","Act":"open","Gid":"g","post":true,"Post":null}`, Header{Op: OpGroupEdit, ID: "0", Act: "open", Gid: "g", Post: true}},
		{`{"Op":6,"Id":"0","Act":"close","Gid":"g","Post":0}`, Header{Op: OpGroupEdit, ID: "0", Act: "close", Gid: "g"}},
		// A join that names no alias parses as before; the server wants
		// one for an open group (an ack error).
		{`{"Op":6,"Id":"0","Act":"join","Gid":"g","Post":false}`, Header{Op: OpGroupEdit, ID: "0", Act: "join", Gid: "g"}},
		{`{"Op":7,"Id":"x","Datalen":1,"For":[],"Post":1}`, Header{Op: OpPost, ID: "x", Datalen: 1, For: []Recipient{}, Post: true}},
	} {
		h := mustParse(t, c.in)
		if !reflect.DeepEqual(*h, c.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.in, *h, c.want)
		}
	}
}

func TestParseHeaderCaseInsensitive(t *testing.T) {
	h := mustParse(t, `{"OP":7,"ID":"x","DATALEN":3,"dataHEAD":1,"FoR":[{"ID":"u","TYPE":1}]}`)
	if h.Op != OpPost || h.ID != "x" || h.Datalen != 3 || h.Datahead != 1 ||
		!reflect.DeepEqual(h.For, []Recipient{{"u", 1}}) {
		t.Errorf("got %+v", h)
	}
	h = mustParse(t, `{"Op":3,"Id":"0","NewAlias":"sam walker"}`)
	if h.NewAlias != "sam walker" {
		t.Errorf("NewAlias: got %+v", h)
	}
	h = mustParse(t, `{"Op":10,"Id":"0","TYPE":"n"}`)
	if h.Type != "n" {
		t.Errorf("TYPE: got %+v", h)
	}
}

func TestParseHeaderUnknownKeys(t *testing.T) {
	h := mustParse(t, `{"op":11,"NoId":"none","whatever":[1,{"a":null}],"x":{"y":"z"}}`)
	if h.Op != OpPulse {
		t.Errorf("got %+v", h)
	}
}

func TestParseHeaderAckType(t *testing.T) {
	for in, want := range map[string]string{
		`"n"`:         "n",
		`1`:           "1",
		`-2.5e3`:      "-2.5e3",
		`"\u0041"`:    "A",
		`"é"`:         "é",
		`"a\"b"`:      `a"b`,
		`"é\u0041\n"`: "éA\n",
		`"\u0041é"`:   "Aé",
		"\"\xff\"":    "\ufffd",
	} {
		h, err := ParseHeader([]byte(`{"op":10,"id":"m","type":` + in + `}`))
		if err != nil {
			t.Errorf("type %s: %v", in, err)
			continue
		}
		if h.Type != want {
			t.Errorf("type %s: got %q, want %q", in, h.Type, want)
		}
	}
	for _, in := range []string{`true`, `{}`, `[]`, `null`, `""`} {
		_, err := ParseHeader([]byte(`{"op":10,"id":"m","type":` + in + `}`))
		wantReason(t, "type "+in, err, QuitHeader)
	}
}

func TestParseHeaderEmptyFor(t *testing.T) {
	h := mustParse(t, `{"op":7,"id":"x","datalen":1,"for":[]}`)
	if h.For == nil || len(h.For) != 0 {
		t.Errorf("for [] decoded as %#v, want empty non-nil", h.For)
	}
	h = mustParse(t, `{"op":9,"id":"x","from":"a","to":"b"}`)
	if h.For != nil || h.Notefor != nil {
		t.Errorf("absent lists decoded as %#v %#v, want nil", h.For, h.Notefor)
	}
}

// requiredCase is a valid header of one op and the fields it requires.
type requiredCase struct {
	base     string
	required []string
}

var requiredCases = map[Op]requiredCase{
	OpTmtpRev:     {`{"op":0,"id":"1"}`, []string{"id"}},
	OpRegister:    {`{"op":1,"newnode":"blue","newalias":"_"}`, []string{"newnode", "newalias"}},
	OpLogin:       {`{"op":2,"uid":"u","node":"n"}`, []string{"uid", "node"}},
	OpUserEdit:    {`{"op":3,"id":"0","newalias":"sam walker"}`, []string{"id", "newalias"}},
	OpOhiEdit:     {`{"op":4,"id":"0","for":[{"id":"u"}],"type":"add"}`, []string{"id", "for", "type"}},
	OpGroupInvite: {`{"op":5,"id":"0","gid":"talktalk","from":"a","to":"b","datalen":5}`, []string{"id", "gid", "from", "to"}},
	OpGroupEdit:   {`{"op":6,"id":"0","act":"join","gid":"g"}`, []string{"id", "act", "gid"}},
	OpPost:        {`{"op":7,"id":"zyx","for":[{"id":"u","type":1}],"datalen":15}`, []string{"id", "for", "datalen"}},
	OpPostNotify:  {`{"op":8,"id":"id","for":[{"id":"u","type":1}],"datalen":14,"notelen":5}`, []string{"id", "for", "datalen", "notelen"}},
	OpPing:        {`{"op":9,"id":"123","from":"a","to":"b"}`, []string{"id", "from", "to"}},
	OpAck:         {`{"op":10,"id":"x","type":"n"}`, []string{"id", "type"}},
	OpPulse:       {`{"op":11}`, nil},
	OpQuit:        {`{"op":12}`, nil},
}

// emptyValue is a required field's "empty" value: a zero length, or a null
// list (as if absent); OhiEdit's for must also not be [].
func emptyValues(op Op, key string) []any {
	switch key {
	case "datalen", "notelen":
		return []any{0}
	case "for":
		if op == OpOhiEdit {
			return []any{nil, []any{}}
		}
		return []any{nil}
	}
	return []any{""}
}

func TestParseHeaderRequired(t *testing.T) {
	for op := range opCount {
		c, ok := requiredCases[op]
		if !ok {
			t.Fatalf("no case for op %d", op)
		}
		mustParse(t, c.base)
		for _, key := range append([]string{"op"}, c.required...) {
			var m map[string]any
			if err := json.Unmarshal([]byte(c.base), &m); err != nil {
				t.Fatal(err)
			}
			delete(m, key)
			b, _ := json.Marshal(m)
			_, err := ParseHeader(b)
			wantReason(t, fmt.Sprintf("op %d without %s: %s", op, key, b), err, QuitHeader)
			if key == "op" {
				continue
			}
			for _, v := range emptyValues(op, key) {
				m[key] = v
				b, _ := json.Marshal(m)
				_, err := ParseHeader(b)
				wantReason(t, fmt.Sprintf("op %d with empty %s: %s", op, key, b), err, QuitHeader)
			}
		}
	}
}

// invalidHeaders are headers that ParseHeader refuses, with the reason. They
// also seed the fuzz tests.
var invalidHeaders = []struct{ name, in, reason string }{
	{"not JSON", `{"Op":12f3`, QuitHeader},
	{"truncated", `{"op":1`, QuitHeader},
	{"trailing data", `{"op":11}{}`, QuitHeader},
	{"array", `[{"op":11}]`, QuitHeader},
	{"string", `"op"`, QuitHeader},
	{"null", `null`, QuitHeader},
	{"empty object", `{}`, QuitHeader},
	{"empty input", ``, QuitHeader},
	{"datalen float", `{"op":7,"id":"x","for":[],"Datalen":1.5}`, QuitHeader},
	{"datalen string", `{"op":7,"id":"x","for":[],"Datalen":"5"}`, QuitHeader},
	{"datalen exponent", `{"op":7,"id":"x","for":[],"Datalen":1e3}`, QuitHeader},
	{"datalen overflow", `{"op":7,"id":"x","for":[],"Datalen":9223372036854775808}`, QuitHeader},
	{"datasum negative", `{"op":7,"id":"x","for":[],"datalen":1,"datasum":-1}`, QuitHeader},
	{"op string", `{"Op":"x"}`, QuitHeader},
	{"op 13", `{"Op":13}`, QuitHeader},
	{"op -1", `{"Op":-1}`, QuitHeader},
	{"op float", `{"Op":11.0}`, QuitHeader},
	{"op null", `{"Op":null}`, QuitHeader},
	{"id number", `{"op":0,"id":1}`, QuitHeader},
	{"for object", `{"op":7,"id":"x","datalen":1,"for":{}}`, QuitHeader},
	{"for of numbers", `{"op":7,"id":"x","datalen":1,"for":[1]}`, QuitHeader},
	{"for type string", `{"op":7,"id":"x","datalen":1,"for":[{"id":"u","type":"1"}]}`, QuitHeader},
	{"fornotself string", `{"op":8,"id":"x","datalen":2,"notelen":1,"for":[],"fornotself":"yes"}`, QuitHeader},
	{"datalen negative", `{"op":7,"id":"x","for":[],"datalen":-1}`, QuitHeader},
	{"datahead negative", `{"op":7,"id":"x","for":[],"datalen":5,"datahead":-1}`, QuitHeader},
	{"datahead over datalen", `{"op":7,"id":"x","for":[],"datalen":5,"datahead":6}`, QuitHeader},
	{"notelen negative", `{"op":8,"id":"x","for":[],"datalen":5,"notelen":-1}`, QuitHeader},
	{"notehead negative", `{"op":8,"id":"x","for":[],"datalen":5,"notelen":2,"notehead":-1}`, QuitHeader},
	{"notehead over notelen", `{"op":8,"id":"x","for":[],"datalen":5,"notelen":2,"notehead":3}`, QuitHeader},
	{"notelen on post", `{"op":7,"id":"x","for":[],"datalen":5,"notelen":2}`, QuitHeader},
	{"notelen on ping", `{"op":9,"id":"x","from":"a","to":"b","datalen":5,"notelen":2}`, QuitHeader},
	{"login with data", `{"Op":2,"Uid":"u","Node":"n","Datalen":5}`, QuitHeader},
	{"login without node", `{"Op":2,"Uid":"noone","NoId":"none"}`, QuitHeader},
	{"post for empty id", `{"op":7,"id":"x","datalen":1,"for":[{"id":"","type":1}]}`, QuitHeader},
	{"post for null element", `{"op":7,"id":"x","datalen":1,"for":[null]}`, QuitHeader},
	{"post for type 0", `{"op":7,"id":"x","datalen":1,"for":[{"id":"u"}]}`, QuitHeader},
	{"post for type 4", `{"op":7,"id":"x","datalen":1,"for":[{"id":"u","type":4}]}`, QuitHeader},
	{"notify for type 0", `{"op":8,"id":"x","datalen":2,"notelen":1,"for":[{"id":"u"}]}`, QuitHeader},
	{"notify notefor empty id", `{"op":8,"id":"x","datalen":2,"notelen":1,"for":[],"notefor":[{"type":1}]}`, QuitHeader},
	{"notify notefor type 9", `{"op":8,"id":"x","datalen":2,"notelen":1,"for":[],"notefor":[{"id":"u","type":9}]}`, QuitHeader},
	{"ohiedit for empty id", `{"op":4,"id":"0","for":[{"id":"u"},{"type":1}],"type":"add"}`, QuitHeader},
	{"ohiedit type", `{"op":4,"id":"0","for":[{"id":"u"}],"type":"remove"}`, QuitHeader},
	{"ohiedit type case", `{"op":4,"id":"0","for":[{"id":"u"}],"type":"ADD"}`, QuitHeader},
	{"ohiedit type number", `{"op":4,"id":"0","for":[{"id":"u"}],"type":1}`, QuitHeader},
	{"useredit both", `{"op":3,"id":"0","newalias":"sam walker","newnode":"ref"}`, QuitHeader},
	{"useredit neither", `{"op":3,"id":"0"}`, QuitHeader},
	// The "aliasonce" extension's UserEdit fields: still exactly one request.
	{"useredit once with newnode", `{"op":3,"id":"0","newnode":"ref","once":1}`, QuitHeader},
	{"useredit once alone", `{"op":3,"id":"0","once":1}`, QuitHeader},
	{"useredit once with dropalias", `{"op":3,"id":"0","dropalias":"sam walker","once":1}`, QuitHeader},
	{"useredit newnode and dropalias", `{"op":3,"id":"0","newnode":"ref","dropalias":"sam walker"}`, QuitHeader},
	{"useredit newalias and dropalias", `{"op":3,"id":"0","newalias":"sam walker","dropalias":"sam walker"}`, QuitHeader},
	{"useredit newalias and listonce", `{"op":3,"id":"0","newalias":"sam walker","listonce":1}`, QuitHeader},
	{"useredit dropalias and listonce", `{"op":3,"id":"0","dropalias":"sam walker","listonce":true}`, QuitHeader},
	{"useredit listonce 0", `{"op":3,"id":"0","listonce":0}`, QuitHeader},
	{"useredit listonce false", `{"op":3,"id":"0","listonce":false}`, QuitHeader},
	{"useredit listonce cleared", `{"op":3,"id":"0","listonce":1,"ListOnce":0}`, QuitHeader},
	{"once string", `{"op":3,"id":"0","newalias":"sam walker","once":"1"}`, QuitHeader},
	{"once 2", `{"op":3,"id":"0","newalias":"sam walker","once":2}`, QuitHeader},
	{"once 1.0", `{"op":3,"id":"0","newalias":"sam walker","once":1.0}`, QuitHeader},
	{"once 1e0", `{"op":3,"id":"0","newalias":"sam walker","once":1e0}`, QuitHeader},
	{"once 10", `{"op":3,"id":"0","newalias":"sam walker","once":10}`, QuitHeader},
	{"once -0", `{"op":3,"id":"0","newalias":"sam walker","once":-0}`, QuitHeader},
	{"once on a ping, wrong type", `{"op":9,"id":"x","from":"a","to":"b","once":"yes"}`, QuitHeader},
	{"listonce list", `{"op":3,"id":"0","listonce":[1]}`, QuitHeader},
	{"dropalias number", `{"op":3,"id":"0","dropalias":7}`, QuitHeader},
	{"dropalias too long", `{"op":3,"id":"0","dropalias":"` + long + `"}`, QuitHeader},
	// The "block" extension's UserEdit fields: still exactly one request.
	{"useredit block and newalias", `{"op":3,"id":"0","block":"sam walker","newalias":"sam walker"}`, QuitHeader},
	{"useredit block and newnode", `{"op":3,"id":"0","block":"sam walker","newnode":"ref"}`, QuitHeader},
	{"useredit block and unblock", `{"op":3,"id":"0","block":"sam walker","unblock":"sam walker"}`, QuitHeader},
	{"useredit block and listblock", `{"op":3,"id":"0","block":"sam walker","listblock":1}`, QuitHeader},
	{"useredit unblock and dropalias", `{"op":3,"id":"0","unblock":"sam walker","dropalias":"sam walker"}`, QuitHeader},
	{"useredit listblock and listonce", `{"op":3,"id":"0","listblock":1,"listonce":1}`, QuitHeader},
	{"useredit block with once", `{"op":3,"id":"0","block":"sam walker","once":1}`, QuitHeader},
	{"useredit block empty", `{"op":3,"id":"0","block":""}`, QuitHeader},
	{"useredit unblock empty", `{"op":3,"id":"0","unblock":""}`, QuitHeader},
	{"useredit listblock 0", `{"op":3,"id":"0","listblock":0}`, QuitHeader},
	{"useredit listblock cleared", `{"op":3,"id":"0","listblock":true,"ListBlock":false}`, QuitHeader},
	{"listblock 2", `{"op":3,"id":"0","listblock":2}`, QuitHeader},
	{"listblock string", `{"op":3,"id":"0","listblock":"1"}`, QuitHeader},
	{"listblock on a ping, wrong type", `{"op":9,"id":"x","from":"a","to":"b","listblock":[]}`, QuitHeader},
	{"block number", `{"op":3,"id":"0","block":7}`, QuitHeader},
	{"unblock list", `{"op":3,"id":"0","unblock":["sam walker"]}`, QuitHeader},
	{"block too long", `{"op":3,"id":"0","block":"` + long + `"}`, QuitHeader},
	{"unblock too long", `{"op":3,"id":"0","unblock":"` + long + `"}`, QuitHeader},
	// The "revoke" extension's UserEdit fields: still exactly one request.
	{"useredit dropnode and listnode", `{"op":3,"id":"0","dropnode":"1","listnode":1}`, QuitHeader},
	{"useredit dropnode and newnode", `{"op":3,"id":"0","dropnode":"1","newnode":"ref"}`, QuitHeader},
	{"useredit dropnode and block", `{"op":3,"id":"0","dropnode":"1","block":"sam walker"}`, QuitHeader},
	{"useredit listnode and listblock", `{"op":3,"id":"0","listnode":1,"listblock":1}`, QuitHeader},
	{"useredit listnode and newalias", `{"op":3,"id":"0","listnode":1,"newalias":"sam walker"}`, QuitHeader},
	{"useredit dropnode with once", `{"op":3,"id":"0","dropnode":"1","once":1}`, QuitHeader},
	{"useredit dropnode empty", `{"op":3,"id":"0","dropnode":""}`, QuitHeader},
	{"useredit listnode 0", `{"op":3,"id":"0","listnode":0}`, QuitHeader},
	{"useredit listnode cleared", `{"op":3,"id":"0","listnode":true,"ListNode":false}`, QuitHeader},
	{"listnode 2", `{"op":3,"id":"0","listnode":2}`, QuitHeader},
	{"listnode string", `{"op":3,"id":"0","listnode":"1"}`, QuitHeader},
	{"listnode on a ping, wrong type", `{"op":9,"id":"x","from":"a","to":"b","listnode":{}}`, QuitHeader},
	{"dropnode number", `{"op":3,"id":"0","dropnode":1}`, QuitHeader},
	{"dropnode too long", `{"op":3,"id":"0","dropnode":"` + long + `"}`, QuitHeader},
	{"groupedit act", `{"op":6,"id":"0","gid":"g","act":"leave"}`, QuitHeader},
	// The "opengroup" extension's acts and flag.
	{"groupedit open without gid", `{"op":6,"id":"0","act":"open"}`, QuitHeader},
	{"groupedit close without gid", `{"op":6,"id":"0","act":"close","gid":""}`, QuitHeader},
	{"groupedit open post 2", `{"op":6,"id":"0","gid":"g","act":"open","post":2}`, QuitHeader},
	{"groupedit open post string", `{"op":6,"id":"0","gid":"g","act":"open","post":"1"}`, QuitHeader},
	{"groupedit close with post", `{"op":6,"id":"0","gid":"g","act":"close","post":1}`, QuitHeader},
	{"groupedit join with post", `{"op":6,"id":"0","gid":"g","act":"join","post":true}`, QuitHeader},
	{"groupedit drop with post", `{"op":6,"id":"0","gid":"g","act":"drop","to":"x","post":1}`, QuitHeader},
	{"groupedit act case", `{"op":6,"id":"0","gid":"g","act":"Open"}`, QuitHeader},
	{"post on a ping, wrong type", `{"op":9,"id":"x","from":"a","to":"b","post":{}}`, QuitHeader},
	{"groupedit alias without newalias", `{"op":6,"id":"0","gid":"g","act":"alias"}`, QuitHeader},
	{"groupedit drop without to", `{"op":6,"id":"0","gid":"g","act":"drop","newalias":"x"}`, QuitHeader},
	{"id too long", `{"op":0,"id":"` + long + `"}`, QuitHeader},
	{"newalias too long", `{"op":3,"id":"0","newalias":"` + long + `"}`, QuitHeader},
	{"unused string too long", `{"op":11,"gid":"` + long + `"}`, QuitHeader},
	{"recipient id too long", `{"op":7,"id":"x","datalen":1,"for":[{"id":"` + long + `","type":1}]}`, QuitHeader},
	{"oidc too long", `{"op":1,"newnode":"n","newalias":"_","oidc":"` + strings.Repeat("t", MaxTokenLen+1) + `"}`, QuitHeader},
	{"header too long", `{"op":11,"x":"` + strings.Repeat("x", MaxHeaderLen) + `"}`, QuitHeader},
	{"ping too long", `{"op":9,"id":"x","from":"a","to":"b","datalen":421}`, QuitDataTooLong},
	{"invite too long", `{"op":5,"id":"x","gid":"g","from":"a","to":"b","datalen":421}`, QuitDataTooLong},
	{"notify data too short", `{"op":8,"id":"x","for":[],"datalen":5,"notelen":5}`, QuitDataTooShort},
	{"notify fornotself empty for", `{"op":8,"id":"x","for":[],"datalen":5,"notelen":2,"fornotself":true}`, QuitRecipientEmpty},
}

// long is a string value one octet over MaxStringLen.
var long = strings.Repeat("x", MaxStringLen+1)

func TestParseHeaderInvalid(t *testing.T) {
	for _, c := range invalidHeaders {
		t.Run(c.name, func(t *testing.T) {
			h, err := ParseHeader([]byte(c.in))
			if h != nil {
				t.Errorf("%s: got header %+v with error %v", c.name, h, err)
			}
			wantReason(t, c.name, err, c.reason)
		})
	}
	// Lists over MaxRecipients, short enough elements that the header is
	// within MaxHeaderLen, so that it is the list limit that refuses them.
	for _, in := range []string{
		`{"op":4,"id":"x","type":"add","for":[` + repeatList(`{"id":"u"}`, MaxRecipients+1) + `]}`,
		`{"op":8,"id":"x","datalen":2,"notelen":1,"for":[],"notefor":[` + repeatList(`{"id":"u"}`, MaxRecipients+1) + `]}`,
	} {
		_, err := ParseHeader([]byte(in))
		wantReason(t, "list too long", err, QuitHeader)
		if err == nil || !strings.Contains(err.Error(), "recipient list too long") {
			t.Errorf("list too long: %v", err)
		}
	}
	// Data on every op that takes none.
	for _, op := range []Op{0, 1, 2, 3, 4, 6, 10, 11, 12} {
		var m map[string]any
		json.Unmarshal([]byte(requiredCases[op].base), &m)
		m["datalen"] = 1
		b, _ := json.Marshal(m)
		_, err := ParseHeader(b)
		wantReason(t, fmt.Sprintf("datalen on op %d", op), err, QuitHeader)
	}
}

func repeatList(elem string, n int) string {
	return strings.TrimSuffix(strings.Repeat(elem+",", n), ",")
}

// limitHeaders are valid headers at the limits. They also seed the fuzz
// tests.
var limitHeaders = []string{
	`{"op":0,"id":"` + maxString + `"}`,
	`{"op":1,"newnode":"n","newalias":"_","oidc":"` + strings.Repeat("t", MaxTokenLen) + `"}`,
	`{"op":4,"id":"x","type":"add","for":[` + repeatList(`{"id":"u"}`, MaxRecipients) + `]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"id":"` + maxString + `","type":3}]}`,
	`{"op":9,"id":"x","from":"a","to":"b","datalen":420}`,
	`{"op":5,"id":"x","gid":"g","from":"a","to":"b","datalen":0}`,
	`{"op":8,"id":"x","for":[],"datalen":6,"notelen":5,"notehead":5}`,
	`{"op":8,"id":"x","for":[{"id":"u","type":2}],"datalen":6,"notelen":5,"fornotself":true}`,
	`{"op":4,"id":"0","for":[{"id":"u","type":7}],"type":"drop"}`, // OhiEdit: any type
	`{"op":6,"id":"0","gid":"g","act":"drop","to":"a"}`,
	`{"op":6,"id":"0","gid":"g","act":"join","newalias":"b"}`,
	`{"op":3,"id":"0","newnode":"ref"}`,
	// The "aliasonce" extension.
	`{"op":3,"id":"0","newalias":"sam walker","once":1}`,
	`{"op":3,"id":"0","newalias":"sam walker","once":true}`,
	`{"op":3,"id":"0","newalias":"sam walker","once":0}`,
	`{"op":3,"id":"0","newnode":"ref","once":null,"listonce":false}`,
	`{"op":3,"id":"0","listonce":1}`,
	`{"op":3,"id":"0","dropalias":"` + maxString + `"}`,
	// The "block" extension.
	`{"op":3,"id":"0","block":"` + maxString + `"}`,
	`{"op":3,"id":"0","unblock":"` + maxString + `"}`,
	`{"op":3,"id":"0","listblock":1}`,
	`{"op":3,"id":"0","newnode":"ref","listblock":false,"block":null}`,
	// The "revoke" extension.
	`{"op":3,"id":"0","dropnode":"` + maxString + `"}`,
	`{"op":3,"id":"0","listnode":1}`,
	`{"op":3,"id":"0","newnode":"ref","listnode":false,"dropnode":null}`,
	// The "opengroup" extension.
	`{"op":6,"id":"0","act":"open","gid":"` + maxString + `","post":1}`,
	`{"op":6,"id":"0","act":"close","gid":"` + maxString + `","post":0}`,
	`{"op":0,"id":"1","ext":{"a":[1,{"b":null}]}}`,
	`{"op":7,"id":"x","datalen":5,"datahead":5,"for":[],"datasum":18446744073709551615}`,
	`{"op":11,"datalen":0,"notelen":0,"for":null,"type":null,"id":null}`,
	`{"op":12} `,
}

// maxString is a string value of MaxStringLen octets.
var maxString = strings.Repeat("x", MaxStringLen)

func TestParseHeaderAtLimits(t *testing.T) {
	for _, s := range limitHeaders {
		if _, err := ParseHeader([]byte(s)); err != nil {
			t.Errorf("%.80s: %v", s, err)
		}
	}
	// A header of exactly MaxHeaderLen octets is fine.
	pad := `{"op":11,"x":"` + strings.Repeat("x", MaxHeaderLen-16) + `"}`
	if len(pad) != MaxHeaderLen {
		t.Fatalf("pad is %d octets", len(pad))
	}
	mustParse(t, pad)
}

// TestParseHeaderDetailHasNoValues checks that errors, which are logged, never
// quote what the client sent (it may be a nodeid).
func TestParseHeaderDetailHasNoValues(t *testing.T) {
	const secret = "7777777"
	for _, in := range []string{
		`{"op":2,"uid":"u","node":` + secret + `}`,
		`{"op":2,"uid":"u","node":"` + secret + `","datalen":` + secret + `.5}`,
		`{"op":2,"uid":"u","node":"` + secret + `","datalen":1}`,
		`{"op":2,"uid":"u","node":"` + secret + `"` + secret,
		`{"op":10,"id":"` + secret + `","type":[` + secret + `]}`,
	} {
		_, err := ParseHeader([]byte(in))
		if err == nil {
			t.Errorf("%s: no error", in)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error quotes the frame: %v", in, err)
		}
	}
}

func TestCheckPing(t *testing.T) {
	cases := []struct {
		data   string
		reason string // "" = valid
	}{
		{"", ""},
		{"hello", ""},
		{strings.Repeat("1", 140), ""},
		{strings.Repeat("1", 141), QuitDataTooLong},
		{"\u00d7" + strings.Repeat("1", 139), ""},                 // 141 octets, 140 units
		{strings.Repeat("\u20ac", 140), ""},                       // 420 octets, 140 units
		{strings.Repeat("\u20ac", 140) + "1", QuitDataTooLong},    // 421 octets
		{strings.Repeat("\U0001F600", 70), ""},                    // 280 octets, 140 units
		{strings.Repeat("\U0001F600", 70) + "1", QuitDataTooLong}, // 141 units
		{"A\xffZ", QuitNotUTF8},
		{"\xed\xa0\x80", QuitNotUTF8}, // a surrogate half
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%.20q", c.data), func(t *testing.T) {
			err := CheckPing([]byte(c.data))
			if c.reason == "" {
				if err != nil {
					t.Errorf("%q: %v", c.data, err)
				}
				return
			}
			wantReason(t, fmt.Sprintf("%.20q", c.data), err, c.reason)
		})
	}
}

// benchHeaders are the requests that the server parses most, with the most
// allocations ParseHeader may make for them: the Header, one string for all
// its strings, and one array for its recipients.
var benchHeaders = []struct {
	name   string
	in     string
	allocs float64
}{
	{"ack", `{"Op":10,"Id":"18a2b3c4d5e6f708","Type":"n"}`, 2},
	{"post1", `{"Op":7,"Id":"zyx","Datalen":15,"Datahead":5,"Datasum":1,"For":[{"Id":"LB27ML46LB27ML46LB27ML46LB27ML46","Type":1}]}`, 3},
	{"post10", `{"Op":7,"Id":"zyx","Datalen":15,"Datahead":5,"Datasum":1,"For":[` +
		repeatList(`{"Id":"LB27ML46LB27ML46LB27ML46LB27ML46","Type":1}`, 10) + `]}`, 3},
}

func BenchmarkParseHeader(b *testing.B) {
	for _, c := range benchHeaders {
		in := []byte(c.in)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ParseHeader(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestParseHeaderAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	for _, c := range benchHeaders {
		in := []byte(c.in)
		n := testing.AllocsPerRun(100, func() {
			if _, err := ParseHeader(in); err != nil {
				t.Fatal(err)
			}
		})
		if n > c.allocs {
			t.Errorf("%s: %v allocations, want at most %v", c.name, n, c.allocs)
		}
	}
}

// FuzzParseHeader checks that ParseHeader never panics, that what it accepts
// keeps the rules it enforces, and that it refuses only with a ProtocolError.
func FuzzParseHeader(f *testing.F) {
	// A valid header of each op, in the published (lower-case) spelling.
	for op := range opCount {
		f.Add(requiredCases[op].base)
	}
	// The deployed client's spelling.
	f.Add(`{"Op":8,"Id":"id","Datalen":14,"Datahead":5,"Datasum":5,"For":[{"Id":"u","Type":1}],"Fornotself":true,"Notelen":5,"Notehead":1,"Notesum":1}`)
	f.Add(`{"Op":4,"Id":"0","For":[{"Id":"u"}],"Type":"init"}`)
	f.Add(`{"Op":10,"Id":"0","Type":1.5e3}`)
	f.Add(`{"Op":10,"Id":"0","TYPE":"x","type":"é\u0041\n"}`) // escapes after non-ASCII; the last key wins
	// Wrong types, escapes, truncation and nesting.
	f.Add(`{"Op":"x","Datalen":1.5}`)
	f.Add(`{"op":0,"id":"\u0000\ud800\"","x":[[[{}]]]}`)
	f.Add(`{"Op":12f3`)
	f.Add(`{"op":7,"id":"x","datalen":1,"for":[null,{"id":1}]}`)
	// The extensions' fields: flags set, cleared, repeated and mistyped.
	f.Add(`{"Op":0,"Id":"1","Ext":[{"x":1}]}`)
	f.Add(`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":1,"once":null}`)
	f.Add(`{"Op":3,"Id":"0","ListOnce":true,"DropAlias":"x"}`)
	f.Add(`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":1.0}`)
	// The "block" extension's: a flag among strings, one request or two.
	f.Add(`{"Op":3,"Id":"0","Block":"sam walker"}`)
	f.Add(`{"Op":3,"Id":"0","Unblock":"sam walker","Block":""}`)
	f.Add(`{"Op":3,"Id":"0","ListBlock":1,"listblock":0}`)
	f.Add(`{"Op":3,"Id":"0","ListBlock":1e0,"Block":7}`)
	// The "revoke" extension's: a flag and a number written as a string.
	f.Add(`{"Op":3,"Id":"0","ListNode":1}`)
	f.Add(`{"Op":3,"Id":"0","DropNode":"12","dropnode":""}`)
	f.Add(`{"Op":3,"Id":"0","DropNode":12,"ListNode":true}`)
	// The "opengroup" extension's: the acts, and the flag on them and on
	// another act.
	f.Add(`{"Op":6,"Id":"0","Act":"open","Gid":"g","Post":1}`)
	f.Add(`{"Op":6,"Id":"0","Act":"close","Gid":"g","post":true,"Post":0}`)
	f.Add(`{"Op":6,"Id":"0","Act":"join","Gid":"g","Post":1}`)
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHeader([]byte(s))
		if err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) || h != nil {
				t.Fatalf("err = %v (%T), header %v", err, err, h)
			}
			return
		}
		if h.Op < 0 || h.Op >= opCount || h.Datalen < 0 || h.Datahead > h.Datalen ||
			h.Notehead > h.Notelen || h.Notelen < 0 || h.Notehead < 0 || h.Datahead < 0 {
			t.Fatalf("accepted %+v", h)
		}
		if !opTakesData(h.Op) && h.Datalen != 0 || h.Op != OpPostNotify && h.Notelen != 0 {
			t.Fatalf("accepted data on op %d: %+v", h.Op, h)
		}
		if len(h.For) > MaxRecipients || len(h.Notefor) > MaxRecipients || len(h.ID) > MaxStringLen {
			t.Fatalf("accepted over limits: %+v", h)
		}
		// type is kept as encoding/json decodes a string, or as the
		// number's text.
		var ref struct {
			Type json.RawMessage `json:"type"`
		}
		if err := json.Unmarshal([]byte(s), &ref); err != nil {
			t.Fatalf("accepted what encoding/json refuses: %v", err)
		}
		want := string(ref.Type)
		if want == "null" {
			want = ""
		} else if len(want) > 0 && want[0] == '"' {
			json.Unmarshal(ref.Type, &want)
		}
		if h.Type != want {
			t.Fatalf("type %q, want %q", h.Type, want)
		}
	})
}
