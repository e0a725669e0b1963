package admin

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseTokens(t *testing.T) {
	const good = "0123456789abcdefghijkl" // minSecretLen characters
	data := "# name     secret\n" +
		"\n" +
		"alice      " + good + "\n" +
		"   # an indented comment\n" +
		"\tprometheus\t" + good + "XYZ   \r\n" +
		"bob " + good + "#not-a-comment\n"
	got, err := ParseTokens([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := []Token{{"alice", good}, {"prometheus", good + "XYZ"}, {"bob", good + "#not-a-comment"}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if got, err := ParseTokens(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty file: %v, %v", got, err)
	}
}

func TestParseTokensRefused(t *testing.T) {
	const good = "0123456789abcdefghijkl"
	for _, tc := range []struct {
		name, data, want string
	}{
		{"name only", "alice\n", "line 1: want NAME SECRET"},
		{"three fields", "alice " + good + " extra\n", "line 1: want NAME SECRET"},
		{"short secret", "# c\nalice " + good[:minSecretLen-1] + "\n", `line 2: secret of "alice" shorter than 22 characters`},
		{"duplicate name", "alice " + good + "\nbob " + good + "\nalice " + good + "x\n", `line 3: name "alice" listed twice`},
		{"long name", strings.Repeat("n", maxNameLen+1) + " " + good + "\n", "line 1: name longer than 64 characters"},
		{"too many", manyTokens(maxTokenEntries+1, good), "line 1001: more than 1000 tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTokens([]byte(tc.data))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v, %v; want error %q", got, err, tc.want)
			}
		})
	}
}

// manyTokens is a token file of n distinct entries.
func manyTokens(n int, secret string) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "admin%d %s\n", i, secret)
	}
	return b.String()
}

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	if err := os.WriteFile(path, []byte("alice 0123456789abcdefghijkl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadTokens(path); err != nil || len(got) != 1 || got[0].Name != "alice" {
		t.Fatalf("got %+v, %v", got, err)
	}
	if _, err := LoadTokens(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing file loaded")
	}
	if err := os.WriteFile(path, []byte(strings.Repeat("#", maxTokenFile+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTokens(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("an oversize file: %v", err)
	}
	if err := os.WriteFile(path, []byte("alice short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTokens(path); err == nil || !strings.Contains(err.Error(), path+": line 1") {
		t.Fatalf("a bad file: %v", err)
	}
}

// FuzzParseTokens: the token file never panics the parser, and what it
// accepts holds its rules: names unique and short, secrets long enough,
// no spaces in either.
func FuzzParseTokens(f *testing.F) {
	f.Add([]byte("alice 8Zq3tY0pV1mFq2Jx9wLk3Rb7Hn\n")) // one admin
	f.Add([]byte("# comment\n\nalice 8Zq3tY0pV1mFq2Jx9wLk3Rb7Hn\nbob Hk2vQp8sXz4LmN7cTg5Wd1Ye0u\n"))
	f.Add([]byte("alice short\n"))                                                        // secret too short
	f.Add([]byte("alice 8Zq3tY0pV1mFq2Jx9wLk3Rb7Hn\nalice Hk2vQp8sXz4LmN7cTg5Wd1Ye0u\n")) // twice
	f.Add([]byte("a b c\n"))                                                              // three fields
	f.Add([]byte("\xff\xfe 8Zq3tY0pV1mFq2Jx9wLk3Rb7Hn\r\n"))                              // bytes, CRLF
	f.Fuzz(func(t *testing.T, data []byte) {
		tokens, err := ParseTokens(data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, tk := range tokens {
			if seen[tk.Name] || len(tk.Name) > maxNameLen || len(tk.Secret) < minSecretLen ||
				strings.ContainsAny(tk.Name+tk.Secret, " \t\n") || tk.Name == "" {
				t.Fatalf("accepted %q", tk)
			}
			seen[tk.Name] = true
		}
	})
}
