package admin

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

// The token file: one admin a line, "NAME SECRET", separated by spaces;
// blank lines and lines starting with "#" are ignored. NAME is what the logs
// record for that admin's changes; SECRET is what they send as a bearer
// token. `mnm admin` sends the first entry's secret unless told which.
//
//	# name     secret
//	alice      8Zq3...
//	prometheus Hk2v...

// Bounds of the token file. A secret guessed over the network must be out of
// reach: 128 bits of entropy is 22 base64 characters, so fewer than 22
// characters is refused as surely too weak; a name is for log lines.
const (
	minSecretLen    = 22
	maxNameLen      = 64
	maxTokenFile    = 64 << 10
	maxTokenEntries = 1000
)

// LoadTokens reads the token file at path.
func LoadTokens(path string) ([]Token, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("admin: token file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return nil, fmt.Errorf("admin: token file %s: %w", path, err)
	}
	if len(data) > maxTokenFile {
		return nil, fmt.Errorf("admin: token file %s: larger than %d bytes", path, maxTokenFile)
	}
	tokens, err := ParseTokens(data)
	if err != nil {
		return nil, fmt.Errorf("admin: token file %s: %w", path, err)
	}
	return tokens, nil
}

// ParseTokens parses the token file's content.
func ParseTokens(data []byte) ([]Token, error) {
	var tokens []Token
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want NAME SECRET", line)
		}
		name, secret := fields[0], fields[1]
		switch {
		case len(name) > maxNameLen:
			return nil, fmt.Errorf("line %d: name longer than %d characters", line, maxNameLen)
		case names[name]:
			return nil, fmt.Errorf("line %d: name %q listed twice", line, name)
		case len(secret) < minSecretLen:
			return nil, fmt.Errorf("line %d: secret of %q shorter than %d characters", line, name, minSecretLen)
		case len(tokens) == maxTokenEntries:
			return nil, fmt.Errorf("line %d: more than %d tokens", line, maxTokenEntries)
		}
		names[name] = true
		tokens = append(tokens, Token{Name: name, Secret: secret})
	}
	return tokens, sc.Err()
}
