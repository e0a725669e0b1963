package testclient

import "encoding/json"

// Recipient is an element of a request's "for" list.
type Recipient struct {
	ID   string `json:"Id"`
	Type int    `json:"Type"` // ToUser, ToGroup or ToGroupOthers
}

// Recipient types (SPEC §4, op 7).
const (
	ToUser        = 1 // ID is a uid
	ToGroup       = 2 // ID is a group, the sender included
	ToGroupOthers = 3 // ID is a group, the sender excluded
)

// forList makes a "for" value: never null, since Post requires the key
// present even when the list is empty.
func forList(to []Recipient) []Recipient {
	if to == nil {
		return []Recipient{}
	}
	return to
}

// Requests are written with the key case of the deployed client ("Op", "Id",
// "Datalen", "For", ...); the server matches keys case-insensitively.

// Post sends data to the recipients (op 7) and waits for the ack; a refusal is
// in Ack.Error. data is sent as given, even empty (which the server refuses).
func (c *Client) Post(to []Recipient, data []byte) (Ack, error) {
	return c.Do(postHead(to, data), data)
}

// PostAsync sends a Post without waiting, for windowed load (several posts in
// flight). The channel receives the ack, or an error if the link ends first.
func (c *Client) PostAsync(to []Recipient, data []byte) (<-chan AckResult, error) {
	return c.Request(postHead(to, data), data)
}

func postHead(to []Recipient, data []byte) map[string]any {
	return map[string]any{"Op": 7, "For": forList(to), "Datalen": len(data)}
}

// PostNotify sends post to the recipients with a notification note for
// notefor (op 8): data is note followed by post. With fornotself the sender's
// other devices get only the notification, not the post.
func (c *Client) PostNotify(to, notefor []Recipient, note, post []byte, fornotself bool) (Ack, error) {
	data := make([]byte, 0, len(note)+len(post))
	data = append(append(data, note...), post...)
	head := map[string]any{
		"Op": 8, "For": forList(to), "Datalen": len(data), "Notelen": len(note),
	}
	if len(notefor) > 0 {
		head["Notefor"] = notefor
	}
	if fornotself {
		head["Fornotself"] = true
	}
	return c.Do(head, data)
}

// NewAlias adds an alias to the user (op 3 with newalias).
func (c *Client) NewAlias(alias string) (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "NewAlias": alias}, nil)
}

// NewNode adds a device labelled label to the user (op 3 with newnode). Its
// nodeid arrives in a "user" message on every device of the user.
func (c *Client) NewNode(label string) (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "NewNode": label}, nil)
}

// OhiEdit edits the list of users told of this user's presence (op 4); typ is
// "add", "drop" or "init".
func (c *Client) OhiEdit(typ string, uids []string) (Ack, error) {
	type ohiFor struct {
		ID string `json:"Id"`
	}
	l := make([]ohiFor, len(uids))
	for i, u := range uids {
		l[i] = ohiFor{ID: u}
	}
	return c.Do(map[string]any{"Op": 4, "For": l, "Type": typ}, nil)
}

// GroupInvite invites alias to into group gid, creating it if new, with the
// sender listed as alias from (op 5); text is the invitation.
func (c *Client) GroupInvite(gid, from, to, text string) (Ack, error) {
	head := map[string]any{"Op": 5, "Gid": gid, "From": from, "To": to, "Datalen": len(text)}
	return c.Do(head, []byte(text))
}

// GroupEdit joins, re-aliases or drops in group gid (op 6): act is "join"
// (newalias optional), "alias" (newalias required) or "drop" (to required).
// Empty newalias and to are omitted.
func (c *Client) GroupEdit(act, gid, newalias, to string) (Ack, error) {
	head := map[string]any{"Op": 6, "Act": act, "Gid": gid}
	if newalias != "" {
		head["NewAlias"] = newalias
	}
	if to != "" {
		head["To"] = to
	}
	return c.Do(head, nil)
}

// Ping sends the short text from alias from to alias to (op 9).
func (c *Client) Ping(from, to, text string) (Ack, error) {
	head := map[string]any{"Op": 9, "From": from, "To": to, "Datalen": len(text)}
	return c.Do(head, []byte(text))
}

// The "aliasonce" extension: single-use aliases (the server lists it in
// Extensions when Options.Ext asks).

// NewOnceAlias adds a single-use alias to the user (op 3 with newalias and
// once): the first Ping or GroupInvite to it reaches the user, and then it
// resolves for nobody.
func (c *Client) NewOnceAlias(alias string) (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "NewAlias": alias, "Once": 1}, nil)
}

// ListOnceAliases asks for the user's unused single-use aliases (op 3 with
// listonce); they are in the ack's "once" list, which OnceList reads.
func (c *Client) ListOnceAliases() (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "ListOnce": 1}, nil)
}

// OnceList returns the single-use aliases listed in the ack of
// ListOnceAliases; nil when the ack has no list (an error).
func (a Ack) OnceList() []string {
	if a.Frame == nil {
		return nil
	}
	return a.Frame.Strings("once")
}

// DropAlias withdraws one of the user's unused single-use aliases, or, with
// the dropalias extension, one of its regular aliases (op 3 with dropalias).
func (c *Client) DropAlias(alias string) (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "DropAlias": alias}, nil)
}

// The "block" extension: block lists (the server lists it in Extensions when
// Options.Ext asks).

// Block adds a uid, or the user an alias names, to the user's block list
// (op 3 with block): nothing it sends reaches the user's devices from then
// on.
func (c *Client) Block(name string) (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "Block": name}, nil)
}

// Unblock removes an entry from the user's block list (op 3 with unblock).
func (c *Client) Unblock(name string) (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "Unblock": name}, nil)
}

// ListBlocks asks for the user's block list (op 3 with listblock); it is in
// the ack's "block" list, which BlockList reads.
func (c *Client) ListBlocks() (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "ListBlock": 1}, nil)
}

// BlockList returns the names listed in the ack of ListBlocks; nil when the
// ack has no list (an error).
func (a Ack) BlockList() []string {
	if a.Frame == nil {
		return nil
	}
	return a.Frame.Strings("block")
}

// The "revoke" extension: revoking a device (the server lists it in
// Extensions when Options.Ext asks).

// Node is one entry of the ack of ListNodes: a live device of the user.
type Node struct {
	Node  string // its number in decimal: what DropNode takes
	Label string // its label, cut when long (Protocol.md, revoke)
	Self  bool   // the device that asked
}

// ListNodes asks for the user's live devices (op 3 with listnode); they are
// in the ack's "node" list, which NodeList reads.
func (c *Client) ListNodes() (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "ListNode": 1}, nil)
}

// NodeList returns the devices listed in the ack of ListNodes, in the
// order given; nil when the ack has no list (an error). Entries that are
// not objects, and fields of the wrong type, read as zero values.
func (a Ack) NodeList() []Node {
	if a.Frame == nil {
		return nil
	}
	l, ok := a.Frame.Head["node"].([]any)
	if !ok {
		return nil
	}
	out := make([]Node, 0, len(l))
	for _, v := range l {
		m, _ := v.(map[string]any)
		n := Node{}
		n.Node, _ = m["node"].(string)
		n.Label, _ = m["label"].(string)
		self, _ := m["self"].(json.Number) // Head keeps numbers' text
		n.Self = self == "1"
		out = append(out, n)
	}
	return out
}

// DropNode retires the user's device numbered node (op 3 with dropnode):
// its nodeid logs in no more, its link is closed and its queue deleted.
func (c *Client) DropNode(node string) (Ack, error) {
	return c.Do(map[string]any{"Op": 3, "DropNode": node}, nil)
}

// The "opengroup" extension: groups by subscription. A stranger joins an
// open group with GroupEdit("join", gid, alias, "") and leaves it with
// GroupEdit("drop", gid, "", alias).

// OpenGroup opens group gid to joins without invitation (op 6 act open),
// and with post to posts from users the group does not list.
func (c *Client) OpenGroup(gid string, post bool) (Ack, error) {
	head := map[string]any{"Op": 6, "Act": "open", "Gid": gid}
	if post {
		head["Post"] = 1
	}
	return c.Do(head, nil)
}

// CloseGroup closes group gid to joins without invitation and to posts
// from users it does not list (op 6 act close).
func (c *Client) CloseGroup(gid string) (Ack, error) {
	return c.Do(map[string]any{"Op": 6, "Act": "close", "Gid": gid}, nil)
}
