package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mnm/v0site/v0test"
)

// TestImportV0CopiesConfig: run in a folder with no config, the import
// copies the old site's, with its certificate and key.
func TestImportV0CopiesConfig(t *testing.T) {
	built, err := v0test.Build(filepath.Join(t.TempDir(), "site"), importSpec)
	if err != nil {
		t.Fatal(err)
	}
	if err := CreateSelfSigned(filepath.Join(built.Dir, "server.crt"), filepath.Join(built.Dir, "server.key"), []string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var out bytes.Buffer
	if code := run([]string{"import-v0", "-config", filepath.Join(dir, ConfigFileName), built.Dir}, &out, io.Discard); code != exitOK {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	for _, name := range []string{ConfigFileName, "server.crt", "server.key"} {
		want, _ := os.ReadFile(filepath.Join(built.Dir, name))
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s not copied: %v", name, err)
		}
	}
	for _, line := range []string{"12 users (16 devices, 3 defunct), 12 aliases (3 retired), 2 groups (8 members)",
		"60 queued messages", "checked: the new userdb/ and qstore/ hold exactly what was read",
		"copied mnm.config, server.crt, server.key"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("summary lacks %q:\n%s", line, out.String())
		}
	}
	if _, err := LoadConfig(filepath.Join(dir, ConfigFileName)); err != nil {
		t.Errorf("copied config does not load: %v", err)
	}
}
