// Package v0test writes site folders in the deployed (v0) server's format,
// for tests and benchmarks of reading and importing them: any number of
// users, devices, aliases, groups and queued messages, with the nodeids and
// message contents returned so that a test can check what an import serves.
package v0test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"hash/crc32"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"mnm/qlib/tmtp"
)

// Spec says what site to build.
type Spec struct {
	Users int
	// SecondDeviceEvery gives every n-th user a second device (0: none).
	SecondDeviceEvery int
	// DefunctDeviceEvery gives every n-th user a defunct device (0: none).
	DefunctDeviceEvery int
	// DefunctAliasEvery gives every n-th user a second, defunct alias.
	DefunctAliasEvery int
	Groups            int // groups of up to GroupSize members, joined
	GroupSize         int
	Messages          int // posts, each to 1 or 2 random users
	// MaxSize bounds a post's data; sizes are uniform in [1, MaxSize].
	MaxSize int
	// ClearKeys keys devices by the nodeid itself rather than by its
	// derivation (the form the site's README describes).
	ClearKeys bool
	Seed      uint64
}

// Site is what Build wrote.
type Site struct {
	Dir    string
	Users  []User
	Groups []string
	Posts  []Post // in id order
}

// User is a built user.
type User struct {
	UID     string
	Nodeids []string // live devices, numbered from 1
	Alias   string
	Retired string // a defunct alias, or ""
}

// Post is a queued post.
type Post struct {
	ID     string
	From   string
	To     []string // uids
	SHA256 [32]byte
	Data   []byte
}

// v0Rounds is the deployed server's nodeid derivation: SHA-256 applied this
// many times.
const v0Rounds = 22389

var rawBase32 = tmtp.Base32.WithPadding(base32.NoPadding)

// Build writes a site as the deployed server would leave it into dir, which
// must not exist yet.
func Build(dir string, spec Spec) (*Site, error) {
	rng := mrand.New(mrand.NewPCG(spec.Seed, 0x76307465))
	s := &Site{Dir: dir}
	for _, d := range []string{"userdb/user", "userdb/alias", "userdb/group", "userdb/temp", "qstore"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "mnm.config"), []byte(Config), 0o600); err != nil {
		return nil, err
	}
	nums := map[string][]int{} // live device numbers by uid
	for i := range spec.Users {
		u := User{UID: randomB32(20), Alias: fmt.Sprintf("v0user%05d-test", i)}
		nodes := map[string]any{}
		ndev := 1
		if spec.SecondDeviceEvery > 0 && i%spec.SecondDeviceEvery == 0 {
			ndev = 2
		}
		num := 1
		for range ndev {
			nodeid := randomB32(25)
			u.Nodeids = append(u.Nodeids, nodeid)
			nodes[nodeKey(nodeid, spec.ClearKeys)] = map[string]any{"Defunct": false, "Num": num}
			nums[u.UID] = append(nums[u.UID], num)
			num++
		}
		if spec.DefunctDeviceEvery > 0 && i%spec.DefunctDeviceEvery == 0 {
			nodes[nodeKey(randomB32(25), spec.ClearKeys)] = map[string]any{"Defunct": true, "Num": num}
		}
		aliases := []any{aliasEntry(u.Alias, false)}
		if spec.DefunctAliasEvery > 0 && i%spec.DefunctAliasEvery == 0 {
			u.Retired = u.Alias + "-old"
			aliases = append(aliases, aliasEntry(u.Retired, true))
		}
		// Field order as the deployed server writes it.
		rec := fmt.Sprintf(`{"Nodes":%s,"NonDefunctNodesCount":%d,"Aliases":%s,"CheckSum":0}`,
			mustJSON(nodes), ndev, mustJSON(aliases))
		if err := writeRecord(filepath.Join(dir, "userdb/user", u.UID), rec); err != nil {
			return nil, err
		}
		for _, a := range []string{u.Alias, u.Retired} {
			if a != "" {
				if err := os.Symlink(u.UID, filepath.Join(dir, "userdb/alias", a)); err != nil {
					return nil, err
				}
			}
		}
		s.Users = append(s.Users, u)
	}
	for g := range spec.Groups {
		gid := fmt.Sprintf("v0group%03d-test", g)
		members := map[string]any{}
		for k := range min(spec.GroupSize, len(s.Users)) {
			u := s.Users[(g*spec.GroupSize+k)%len(s.Users)]
			members[u.UID] = map[string]any{"Alias": u.Alias, "Status": 2}
		}
		rec := fmt.Sprintf(`{"Uid":%s,"CheckSum":0}`, mustJSON(members))
		if err := writeRecord(filepath.Join(dir, "userdb/group", gid), rec); err != nil {
			return nil, err
		}
		s.Groups = append(s.Groups, gid)
	}
	id := uint64(time.Now().UnixNano())
	posted := time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00")
	for range spec.Messages {
		id++
		from := s.Users[rng.IntN(len(s.Users))].UID
		to := []string{s.Users[rng.IntN(len(s.Users))].UID}
		if r := s.Users[rng.IntN(len(s.Users))].UID; rng.IntN(2) == 0 && r != to[0] {
			to = append(to, r)
		}
		data := make([]byte, 1+rng.IntN(max(spec.MaxSize, 1)))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		p := Post{ID: fmt.Sprintf("%016x", id), From: from, To: to, SHA256: sha256.Sum256(data), Data: data}
		head := map[string]any{"datalen": len(data), "from": from, "id": p.ID, "op": "delivery", "posted": posted}
		frame := append(Frame(head), data...)
		var first string
		for _, uid := range to {
			for _, n := range nums[uid] {
				path := filepath.Join(QueueDir(dir, uid, n), "M"+p.ID)
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					return nil, err
				}
				if first == "" {
					first = path
					err := os.WriteFile(path, frame, 0o600)
					if err != nil {
						return nil, err
					}
				} else if err := os.Link(first, path); err != nil {
					return nil, err
				}
			}
		}
		s.Posts = append(s.Posts, p)
	}
	return s, nil
}

// Config is a deployed-shape config for built sites, with a provider whose
// URLs point at a closed loopback port, and no certificate.
const Config = `{
"#": "written by v0test",
  "ntp": {"hosts": ["127.0.0.1"], "retries": 1},
  "listen": {"net": "tcp", "laddr": "127.0.0.1:0", "certPath": "./server.crt", "keyPath": "./server.key"},
  "name": "v0test"
}
`

// QueueDir is the queue folder of device num of uid in the site dir.
func QueueDir(dir, uid string, num int) string {
	lower := strings.ToLower(uid)
	return filepath.Join(dir, "qstore", lower[:4], lower+"."+fmt.Sprintf("%02x", num))
}

// Frame returns a stored message's frame header, with its headsum, as the
// deployed server writes it: 4 hex digits and compact JSON, keys sorted.
func Frame(head map[string]any) []byte {
	body := mustJSON(head)
	sum := crc32.Checksum(fmt.Appendf(nil, "%04x%s", len(body), body), crc32.MakeTable(crc32.Castagnoli))
	h := make(map[string]any, len(head)+1)
	for k, v := range head {
		h[k] = v
	}
	h["headsum"] = sum
	body = mustJSON(h)
	return fmt.Appendf(nil, "%04x%s", len(body), body)
}

// nodeKey is what the deployed server keys a device by.
func nodeKey(nodeid string, clear bool) string {
	if clear {
		return nodeid
	}
	b, err := tmtp.Base32.DecodeString(nodeid)
	if err != nil {
		panic(err) // made by randomB32
	}
	h := sha256.Sum256(b)
	for range v0Rounds - 1 {
		h = sha256.Sum256(h[:])
	}
	return rawBase32.EncodeToString(h[:])
}

func aliasEntry(name string, defunct bool) map[string]any {
	return map[string]any{"En": "", "Nat": name, "EnDefunct": false, "NatDefunct": defunct, "EnTouched": false, "NatTouched": true}
}

// writeRecord writes rec (JSON with "CheckSum":0) with its CheckSum filled
// in and a final newline, as the deployed server does.
func writeRecord(path, rec string) error {
	sum := crc32.Checksum([]byte(rec), crc32.MakeTable(crc32.Castagnoli))
	rec = strings.Replace(rec, `"CheckSum":0`, `"CheckSum":`+strconv.FormatUint(uint64(sum), 10), 1)
	return os.WriteFile(path, []byte(rec+"\n"), 0o600)
}

// Resum rewrites the record at path after a test changed it, with a correct
// CheckSum.
func Resum(path string, rec map[string]any) error {
	rec["CheckSum"] = 0
	return writeRecord(path, mustJSON(rec))
}

func randomB32(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return tmtp.Base32.EncodeToString(b)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps and slices of plain values
	}
	return string(b)
}
