package v0site

import (
	"bytes"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"mnm/qlib/tmtp"
)

const (
	// maxRecordBytes bounds a record read whole: a user with the deployed
	// server's 100 live devices and many defunct ones, aliases and sign-up
	// claims is a few tens of KB; a group of thousands of members is a few
	// hundred. Anything bigger is not a record.
	maxRecordBytes = 16 << 20

	// maxDeviceNum is the largest device number a queue folder can name
	// (two hex digits).
	maxDeviceNum = 0xff

	// nodeidBytes and derivedBytes are the decoded lengths of the two forms
	// a node key takes: a nodeid (SPEC §3) or its SHA-256 derivation.
	nodeidBytes  = 25
	derivedBytes = 32
)

// rawBase32 decodes a derivation's key, which the deployed server writes
// without padding.
var rawBase32 = tmtp.Base32.WithPadding(base32.NoPadding)

// crcTable is CRC-32C, the deployed server's record checksum.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

// v0User is a user record as the deployed server writes it.
type v0User struct {
	Nodes map[string]struct {
		Defunct bool
		Num     int
	}
	NonDefunctNodesCount int
	Aliases              []struct {
		En, Nat               string
		EnDefunct, NatDefunct bool
	}
	Authentication json.RawMessage
	CheckSum       uint32
}

// v0Group is a group record as the deployed server writes it.
type v0Group struct {
	Uid map[string]struct {
		Alias  string
		Status Status
	}
	CheckSum uint32
}

func (r *reader) readUserDB() error {
	db := filepath.Join(r.site.Dir, "userdb")
	r.users = make(map[string]*User)
	if err := r.eachFile(filepath.Join(db, "user"), r.readUser); err != nil {
		return err
	}
	for _, uid := range slices.Sorted(maps.Keys(r.users)) {
		r.site.Users = append(r.site.Users, *r.users[uid])
	}
	if err := r.checkAliasLinks(filepath.Join(db, "alias")); err != nil {
		return err
	}
	if err := r.eachFile(filepath.Join(db, "group"), r.readGroup); err != nil {
		return err
	}
	slices.SortFunc(r.site.Groups, func(a, b Group) int { return strings.Compare(a.GID, b.GID) })
	// A leftover in temp is a write the deployed server never finished (it
	// renames a whole file into place), so it was never in effect.
	return r.eachFile(filepath.Join(db, "temp"), func(path, _ string) error {
		r.note(path, errors.New("leftover of an interrupted write; not imported"))
		return nil
	})
}

// eachFile calls fn for each entry of dir in name order; a missing dir has
// none.
func (r *reader) eachFile(dir string, fn func(path, name string) error) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("v0site: %w", err)
	}
	for _, e := range entries {
		if err := fn(filepath.Join(dir, e.Name()), e.Name()); err != nil {
			return err
		}
	}
	return nil
}

// readRecord reads the record at path into v and checks its CheckSum.
func readRecord(path string, v any) error {
	data, err := readSmall(path, maxRecordBytes)
	if err != nil {
		return err
	}
	return decodeRecord(data, v)
}

// decodeRecord decodes a record into v and checks its CheckSum.
func decodeRecord(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return damaged("not a record: %v", err)
	}
	return checkSum(data)
}

// checkSum checks a record's CheckSum: the CRC-32C of the record's JSON (the
// file without its final newline) as written with CheckSum 0. The record's
// own bytes are checked, with the number replaced, so that no re-encoding can
// hide or invent a difference.
func checkSum(data []byte) error {
	data = bytes.TrimSuffix(data, []byte("\n"))
	const key = `"CheckSum":`
	i := bytes.LastIndex(data, []byte(key))
	if i < 0 {
		return damaged("no CheckSum")
	}
	start := i + len(key)
	end := start
	for end < len(data) && '0' <= data[end] && data[end] <= '9' {
		end++
	}
	want, err := strconv.ParseUint(string(data[start:end]), 10, 32)
	if err != nil {
		return damaged("bad CheckSum")
	}
	zeroed := slices.Concat(data[:start], []byte("0"), data[end:])
	if got := crc32.Checksum(zeroed, crcTable); got != uint32(want) {
		return damaged("CheckSum %d, contents give %d", want, got)
	}
	return nil
}

// readSmall reads a whole file of at most limit octets.
func readSmall(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, damaged("not a regular file")
	}
	if fi.Size() > limit {
		return nil, damaged("%d octets, more than a record can be", fi.Size())
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		return nil, err
	}
	return data, nil
}

func (r *reader) readUser(path, uid string) error {
	u, err := parseUser(path, uid)
	if err != nil {
		return r.bad(path, err)
	}
	r.users[uid] = u
	return nil
}

func parseUser(path, uid string) (*User, error) {
	if !validUID(uid) {
		return nil, damaged("file name is not a uid")
	}
	data, err := readSmall(path, maxRecordBytes)
	if err != nil {
		return nil, err
	}
	u, err := decodeUser(data, uid)
	if err != nil {
		return nil, err
	}
	u.File = path
	return u, nil
}

// decodeUser decodes and checks the record of uid.
func decodeUser(data []byte, uid string) (*User, error) {
	var rec v0User
	if err := decodeRecord(data, &rec); err != nil {
		return nil, err
	}
	u := &User{UID: uid}
	live := 0
	for key, n := range rec.Nodes {
		d := Device{Num: n.Num, Defunct: n.Defunct}
		var err error
		switch {
		case n.Num < 1 || n.Num > maxDeviceNum:
			return nil, damaged("device number %d", n.Num)
		case len(key) == rawBase32.EncodedLen(derivedBytes):
			d.Key, err = rawBase32.DecodeString(key)
			d.Derived = true
		case len(key) == tmtp.Base32.EncodedLen(nodeidBytes):
			d.Key, err = tmtp.Base32.DecodeString(key)
		default:
			err = errors.New("wrong length")
		}
		if err != nil {
			// The key is a credential: never put it in an error.
			return nil, damaged("device %d: node key is neither a nodeid nor its derivation", n.Num)
		}
		if !n.Defunct {
			live++
		}
		u.Devices = append(u.Devices, d)
	}
	slices.SortFunc(u.Devices, func(a, b Device) int { return a.Num - b.Num })
	for i := 1; i < len(u.Devices); i++ {
		if u.Devices[i].Num == u.Devices[i-1].Num {
			return nil, damaged("two devices numbered %d", u.Devices[i].Num)
		}
	}
	if live != rec.NonDefunctNodesCount {
		return nil, damaged("NonDefunctNodesCount %d, but %d devices are live", rec.NonDefunctNodesCount, live)
	}
	for _, a := range rec.Aliases {
		for _, n := range []Alias{{a.Nat, a.NatDefunct}, {a.En, a.EnDefunct}} {
			if n.Name == "" {
				continue
			}
			if !validName(n.Name) {
				return nil, damaged("alias %q", n.Name)
			}
			u.Aliases = append(u.Aliases, n)
		}
	}
	if len(rec.Authentication) > 0 && string(rec.Authentication) != "null" {
		u.Auth = rec.Authentication
	}
	return u, nil
}

// checkAliasLinks compares the alias links with the records. The records are
// what is imported; a link must not give an alias to another user than the
// record that holds it. A link no record confirms is reported and left out.
func (r *reader) checkAliasLinks(dir string) error {
	owner := make(map[string]string)
	for _, u := range r.site.Users {
		for _, a := range u.Aliases {
			if prev, ok := owner[a.Name]; ok {
				return r.conflict(u.File, fmt.Errorf("alias %q is also in the record of %s", a.Name, prev))
			}
			owner[a.Name] = u.UID
		}
	}
	return r.eachFile(dir, func(path, alias string) error {
		target, err := os.Readlink(path)
		if err != nil {
			return r.bad(path, damaged("not an alias link: %v", err))
		}
		uid := filepath.Base(target)
		switch o, ok := owner[alias]; {
		case !ok:
			r.note(path, fmt.Errorf("alias link to %s, whose record does not list it; not imported", uid))
		case o != uid:
			return r.bad(path, damaged("alias link to %s, but the record of %s lists the alias", uid, o))
		}
		return nil
	})
}

// conflict is bad for a contradiction between records, which SkipBad
// cannot resolve by skipping one file.
func (r *reader) conflict(file string, err error) error {
	return fmt.Errorf("v0site: %s: %w", file, errors.Join(ErrDamaged, err))
}

func (r *reader) readGroup(path, gid string) error {
	g, err := r.parseGroup(path, gid)
	if err != nil {
		return r.bad(path, err)
	}
	r.site.Groups = append(r.site.Groups, *g)
	return nil
}

func (r *reader) parseGroup(path, gid string) (*Group, error) {
	if !validName(gid) {
		return nil, damaged("file name is not a group id")
	}
	var rec v0Group
	if err := readRecord(path, &rec); err != nil {
		return nil, err
	}
	g := &Group{GID: gid, File: path}
	for _, uid := range slices.Sorted(maps.Keys(rec.Uid)) {
		m := rec.Uid[uid]
		if m.Status < Invited || m.Status > Barred {
			return nil, damaged("member %s: status %d", uid, m.Status)
		}
		if !validName(m.Alias) {
			return nil, damaged("member %s: alias %q", uid, m.Alias)
		}
		u := r.users[uid]
		if u == nil {
			if r.opts.SkipBad {
				r.note(path, fmt.Errorf("member %s is not an imported user; left out", uid))
				continue
			}
			return nil, damaged("member %s is not a user", uid)
		}
		g.Members = append(g.Members, Member{UID: uid, Alias: m.Alias, Status: m.Status})
	}
	return g, nil
}

// validUID reports whether s can be a uid of the deployed server: its base32
// alphabet (upper case) and at most 64 characters.
func validUID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '%' || c == '+' || c == '=') {
			return false
		}
	}
	return true
}

// validName reports whether s can be an alias or gid the deployed server
// stored: non-empty UTF-8. The importer applies this server's own rules.
func validName(s string) bool {
	return s != "" && utf8.ValidString(s)
}
