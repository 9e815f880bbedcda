package main

// The shape of the code, checked: what issue 13 ("a codebase a newcomer
// reads in an hour") set out, kept from drifting back. These tests read
// the source tree, not the binary.

import (
	"bufio"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const (
	maxFuncLines = 80
	maxFileLines = 700
)

// longFuncs are the functions allowed past maxFuncLines, each with the
// reason its length is earned. Keep it short.
var longFuncs = map[string]string{}

// sourceFiles returns the repository's non-test Go files, relative paths.
func sourceFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != "." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestCodeShape(t *testing.T) {
	fset := token.NewFileSet()
	for _, file := range sourceFiles(t) {
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if n := fset.File(f.Pos()).LineCount(); n > maxFileLines {
			t.Errorf("%s has %d lines (at most %d): split it by concern", file, n, maxFileLines)
		}
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok {
				continue
			}
			n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
			name := packageOf(file) + "." + funcName(fd)
			if _, earned := longFuncs[name]; n > maxFuncLines && !earned {
				t.Errorf("%s: %s has %d lines (at most %d): break it into named steps, or say in longFuncs why its length is earned", file, name, n, maxFuncLines)
			}
		}
	}
}

// packageOf names a file's package by its directory ("main" for the root).
func packageOf(file string) string {
	if dir := filepath.Dir(file); dir != "." {
		return dir
	}
	return "main"
}

func funcName(fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	t := fd.Recv.List[0].Type
	if s, ok := t.(*ast.StarExpr); ok {
		t = s.X
	}
	if g, ok := t.(*ast.IndexExpr); ok {
		t = g.X
	}
	if id, ok := t.(*ast.Ident); ok {
		return id.Name + "." + fd.Name.Name
	}
	return fd.Name.Name
}

// TestPackagesSayWhatTheyOwn: every package opens with a doc comment.
func TestPackagesSayWhatTheyOwn(t *testing.T) {
	documented := map[string]bool{}
	fset := token.NewFileSet()
	for _, file := range sourceFiles(t) {
		f, err := parser.ParseFile(fset, file, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Dir(file)
		documented[dir] = documented[dir] || f.Doc != nil
	}
	for dir, ok := range documented {
		if !ok {
			t.Errorf("package %s has no doc comment: say what it owns and what it may import", dir)
		}
	}
}

// TestLayoutTableMatchesTree: README's layout table names every package
// directory, and every directory it names exists.
func TestLayoutTableMatchesTree(t *testing.T) {
	readme, err := os.Open("README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer readme.Close()
	var listed []string
	inLayout := false
	cell := regexp.MustCompile("^\\| `([^`]+)` \\|")
	for sc := bufio.NewScanner(readme); sc.Scan(); {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			inLayout = line == "## Layout"
			continue
		}
		if m := cell.FindStringSubmatch(line); inLayout && m != nil {
			for _, p := range strings.Split(m[1], "`, `") {
				listed = append(listed, strings.TrimSuffix(p, "/"))
			}
		}
	}
	if len(listed) == 0 {
		t.Fatal("README.md has no ## Layout table")
	}
	for _, p := range listed {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("README's layout table names %s, which does not exist", p)
		}
	}
	missing := map[string]bool{}
	for _, file := range sourceFiles(t) {
		dir := filepath.Dir(file)
		if dir != "." && !strings.HasPrefix(dir, "scripts") && !slices.Contains(listed, dir) && !missing[dir] {
			missing[dir] = true
			t.Errorf("package %s is missing from README's layout table", dir)
		}
	}
}

// TestClientImportsNoServer: the client's packages do not pull in the
// server's storage or metrics.
func TestClientImportsNoServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./pipe/...", "./rendezvous").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "bbolt") || strings.Contains(dep, "prometheus") {
			t.Errorf("the client's packages depend on %s", dep)
		}
	}
}
