package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
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

// PrepareTool is the start of every integration test package: the services
// must be there (a missing one fails the package, never skips it), and the
// tool is built once into a temporary directory. A prebuilt binary named by
// the environment variable override (if non-empty and set) is used instead,
// e.g. one built from a clean checkout while the tree is mid-edit. cleanup
// removes the build directory.
func PrepareTool(override string) (tool string, cleanup func(), err error) {
	if err := CheckPrereqs(); err != nil {
		return "", nil, fmt.Errorf("prerequisite missing: %w\n(run integration/setup.sh as root, or `make test`)", err)
	}
	dir, err := os.MkdirTemp("", "glance-image-sync-bin-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if override != "" {
		if tool = os.Getenv(override); tool != "" {
			return tool, cleanup, nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if tool, err = BuildTool(ctx, dir); err != nil {
		cleanup()
		return "", nil, err
	}
	return tool, cleanup, nil
}
