package v0site

import (
	"bytes"
	"encoding/json"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"mnm/qlib/tmtp"
)

// idLen is the length of a message id: 16 hex digits (SPEC §3).
const idLen = 16

func (r *reader) readQStore() error {
	byLower := make(map[string]*User, len(r.users))
	for uid, u := range r.users {
		byLower[strings.ToLower(uid)] = u
	}
	msgs := make(map[string]*Message)
	qstore := filepath.Join(r.site.Dir, "qstore")
	err := r.eachFile(qstore, func(prefixPath, prefix string) error {
		return r.eachFile(prefixPath, func(qpath, qname string) error {
			dev, err := queueDevice(prefix, qname, byLower)
			if err != nil {
				return r.bad(qpath, err)
			}
			return r.eachFile(qpath, func(path, name string) error {
				return r.readQueued(path, name, dev, msgs)
			})
		})
	})
	if err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(msgs)) {
		m := msgs[id]
		slices.SortFunc(m.Queues, func(a, b DeviceRef) int {
			if c := strings.Compare(a.UID, b.UID); c != 0 {
				return c
			}
			return a.Num - b.Num
		})
		r.site.Msgs = append(r.site.Msgs, *m)
	}
	return nil
}

// queueDevice returns the device whose queue folder is name, in the folder
// prefix.
func queueDevice(prefix, name string, byLower map[string]*User) (DeviceRef, error) {
	lower, numHex, ok := strings.Cut(name, ".")
	if !ok || len(numHex) != 2 || !strings.HasPrefix(lower, prefix) || len(prefix) != min(4, len(lower)) {
		return DeviceRef{}, damaged("not a queue folder name")
	}
	num, err := strconv.ParseUint(numHex, 16, 8)
	if err != nil {
		return DeviceRef{}, damaged("not a queue folder name")
	}
	u := byLower[lower]
	if u == nil {
		return DeviceRef{}, damaged("queue of a user who is not imported")
	}
	if !slices.ContainsFunc(u.Devices, func(d Device) bool { return d.Num == int(num) }) {
		return DeviceRef{}, damaged("queue of device %d, which %s does not have", num, u.UID)
	}
	return DeviceRef{UID: u.UID, Num: int(num)}, nil
}

// readQueued takes in the queue entry path for dev. A message seen before in
// another queue must be the same file (a hard link) or have the same bytes.
func (r *reader) readQueued(path, name string, dev DeviceRef, msgs map[string]*Message) error {
	if len(name) != 1+idLen || (name[0] != 'E' && name[0] != 'M') || !isLowerHex(name[1:]) {
		return r.bad(path, damaged("not a queue entry name"))
	}
	id, high := name[1:], name[0] == 'E'
	if m := msgs[id]; m != nil {
		if m.High != high {
			return r.bad(path, damaged("queued as %c here but not in %s", name[0], m.Path))
		}
		same, err := sameMessage(m.Path, path)
		if err != nil {
			return r.bad(path, err)
		}
		if !same {
			return r.bad(path, damaged("message %s differs from %s", id, m.Path))
		}
		m.Queues = append(m.Queues, dev)
		return nil
	}
	size, hlen, err := checkMessage(path, id)
	if err != nil {
		return r.bad(path, err)
	}
	msgs[id] = &Message{ID: id, High: high, Queues: []DeviceRef{dev}, Path: path, Size: size, HeaderLen: hlen}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// checkMessage checks that the file at path is a stored message with the
// given id: a frame whose header parses, names the id, has a valid headsum
// and a datalen that accounts for the rest of the file. It returns the file's
// size and the frame header's length.
func checkMessage(path, id string) (size int64, hlen int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, 0, damaged("not a regular file")
	}
	head, err := ReadHeader(f)
	if err != nil {
		return 0, 0, err
	}
	var h struct {
		ID      string `json:"id"`
		Datalen int64  `json:"datalen"`
	}
	if err := json.Unmarshal(head[4:], &h); err != nil {
		return 0, 0, damaged("header: %v", err)
	}
	switch {
	case h.ID != id:
		return 0, 0, damaged("header id %q, file name says %s", h.ID, id)
	case h.Datalen != fi.Size()-int64(len(head)):
		return 0, 0, damaged("datalen %d, but %d octets follow the header", h.Datalen, fi.Size()-int64(len(head)))
	case !tmtp.VerifyHeadsum(head[4:]):
		return 0, 0, damaged("headsum does not match the header")
	}
	return fi.Size(), len(head), nil
}

// ReadHeader reads a frame header from r: 4 hex digits and the JSON header
// they give the length of. It returns both.
func ReadHeader(r io.Reader) ([]byte, error) {
	var prefix [4]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		return nil, damaged("no frame header: %v", err)
	}
	n, err := strconv.ParseUint(string(prefix[:]), 16, 16)
	if err != nil || n < 2 {
		return nil, damaged("frame header length %q", prefix[:])
	}
	head := make([]byte, 4+n)
	copy(head, prefix[:])
	if _, err := io.ReadFull(r, head[4:]); err != nil {
		return nil, damaged("frame header cut short: %v", err)
	}
	return head, nil
}

// sameMessage reports whether the files a and b hold the same message: the
// same file (hard links, as the deployed server makes them) or equal bytes.
func sameMessage(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	if os.SameFile(fa, fb) {
		return true, nil
	}
	if fa.Size() != fb.Size() {
		return false, nil
	}
	return sameBytes(a, b)
}

func sameBytes(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	const bufSize = 64 << 10
	ba, bb := make([]byte, bufSize), make([]byte, bufSize)
	for {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if erra == io.EOF || erra == io.ErrUnexpectedEOF {
			return errb == erra, nil
		}
		if erra != nil {
			return false, erra
		}
		if errb != nil {
			return false, errb
		}
	}
}
