package harness

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// RepoRoot returns the directory of the module's go.mod, wherever the
// caller's working directory is inside the module.
func RepoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("harness: go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == "/dev/null" {
		return "", fmt.Errorf("harness: not inside the glance-image-sync module")
	}
	return filepath.Dir(mod), nil
}

// BuildTool compiles ./cmd/glance-image-sync into outDir and returns the
// binary's path. Tests run the binary, not the packages, to drive the tool
// exactly as an operator does.
func BuildTool(ctx context.Context, outDir string) (string, error) {
	root, err := RepoRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(outDir, "glance-image-sync")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/glance-image-sync")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("harness: go build ./cmd/glance-image-sync: %v\n%s", err, out)
	}
	return bin, nil
}
