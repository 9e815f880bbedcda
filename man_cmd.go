package main

// The manual page, generated from the app: its usage, description, every
// command and flag (with its environment variable and default), the
// environment and the exit codes. It is written as markdown and turned
// into roff by go-md2man, as urfave/cli's ToMan does; its own template
// would run the description's examples and the exit codes together into
// one paragraph and show no environment variables. p2pcat.1 at the root is
// this page, checked by TestManPageCheckedIn.

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/pipe/term"
)

func manCommand() *cli.Command {
	return &cli.Command{
		Name:        "man",
		Usage:       "print the manual page (roff)",
		Description: "Read it with: p2pcat man | man -l -\n\nInstall it with: p2pcat man > /usr/local/share/man/man1/p2pcat.1",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("man takes no arguments")
			}
			_, err := io.WriteString(c.App.Writer, manPage(c.App))
			return err
		},
	}
}

// manPage is the manual page of app, in roff.
func manPage(app *cli.App) string {
	app.Setup() // adds --help and --version, as when it runs
	var b strings.Builder
	fmt.Fprintf(&b, "%s 1 \"\" \"%s\" \"User Commands\"\n===\n\n", app.Name, app.Name)
	fmt.Fprintf(&b, "# NAME\n\n%s - %s\n\n", app.Name, mdEscape(app.Usage))
	fmt.Fprintf(&b, "# SYNOPSIS\n\n**%s** [*OPTION*]... **--find** *PEER*\n\n**%s** *COMMAND* [*OPTION*]... [*ARGUMENT*]...\n\n", app.Name, app.Name)
	fmt.Fprintf(&b, "# DESCRIPTION\n\n%s\n\n", mdEscape(app.Usage)+".")
	b.WriteString(mdCode(appExamples))
	fmt.Fprintf(&b, "%s\n\n", mdEscape(appNotes))
	b.WriteString("# OPTIONS\n\n")
	b.WriteString(mdFlags(app.VisibleFlags(), true))
	b.WriteString("# COMMANDS\n\n")
	for _, cmd := range app.VisibleCommands() {
		fmt.Fprintf(&b, "### %s", cmd.Name)
		if cmd.ArgsUsage != "" {
			fmt.Fprintf(&b, " *%s*", mdEscape(cmd.ArgsUsage))
		}
		fmt.Fprintf(&b, "\n\n%s.\n\n", mdEscape(cmd.Usage))
		if cmd.Description != "" {
			b.WriteString(mdText(cmd.Description))
		}
		b.WriteString(mdFlags(cmd.VisibleFlags(), false))
	}
	b.WriteString("# ENVIRONMENT\n\n")
	for _, e := range [][2]string{
		{term.PasswordEnv, "the password; without it p2pcat asks on the terminal (there is no flag: argv is visible to every user)"},
		{"P2PCAT_SESSION_KEY", "the registered session's key, in place of --session-key-file"},
		{"XDG_STATE_HOME", "serve keeps its database in $XDG_STATE_HOME/p2pcat (default: ~/.local/state/p2pcat)"},
		{"P2PCAT_CPUPROFILE", "write a CPU profile of the run to this file (for developers)"},
	} {
		fmt.Fprintf(&b, "%s\n: %s\n\n", e[0], mdEscape(e[1]))
	}
	b.WriteString("Every option can also be set from the variable named beside it.\n\n")
	b.WriteString("# EXIT STATUS\n\n")
	for _, line := range strings.Split(exitsHelpTxt, "\n")[1:] {
		code, meaning, _ := strings.Cut(strings.TrimSpace(line), "  ")
		fmt.Fprintf(&b, "%s\n: %s\n\n", code, mdEscape(meaning))
	}
	b.WriteString("# SEE ALSO\n\n**nc**(1), **socat**(1); *p2pcat --help*, and the README and PROTOCOL.md of the source.\n")
	return string(md2man.Render([]byte(b.String())))
}

// mdFlags is a definition list of flags: names and value, then usage,
// environment variable and default; top: the app's own flags.
func mdFlags(flags []cli.Flag, top bool) string {
	var b strings.Builder
	for _, f := range flags {
		d, ok := f.(cli.DocGenerationFlag)
		if !ok || f == cli.HelpFlag && !top {
			continue // a command's --help is added only when it runs
		}
		placeholder, usage := unquoteUsage(d.GetUsage())
		var names []string
		for _, n := range f.Names() {
			names = append(names, "**"+mdEscape(dashed(n))+"**")
		}
		term := strings.Join(names, ", ")
		if d.TakesValue() {
			if placeholder == "" {
				placeholder = placeholderOf(f)
			}
			term += " *" + mdEscape(placeholder) + "*"
		}
		def := strings.Join(strings.Fields(usage), " ")
		if env := d.GetEnvVars(); len(env) > 0 {
			def += " (environment: " + strings.Join(env, ", ") + ")"
		}
		if v := d.GetDefaultText(); d.TakesValue() && v != "" {
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			if v != "" && v != "0" {
				def += " (default: " + v + ")"
			}
		}
		fmt.Fprintf(&b, "%s\n: %s\n\n", term, mdEscape(def))
	}
	return b.String()
}

// placeholderOf names a flag's value by its type.
func placeholderOf(f cli.Flag) string {
	switch f.(type) {
	case *cli.DurationFlag:
		return "DURATION"
	case *cli.IntFlag, *cli.Float64Flag:
		return "N"
	}
	return "VALUE"
}

// unquoteUsage takes the value's name out of a flag's usage, where it is
// in backquotes (urfave/cli's rule, which it keeps unexported).
func unquoteUsage(usage string) (name, rest string) {
	before, after, ok := strings.Cut(usage, "`")
	if !ok {
		return "", usage
	}
	name, after, ok = strings.Cut(after, "`")
	if !ok {
		return "", usage
	}
	return name, before + name + after
}

// mdText is text of the help: its indented lines (examples) as code
// blocks, its other lines as paragraphs.
func mdText(s string) string {
	var b strings.Builder
	for _, para := range strings.Split(strings.TrimSpace(s), "\n\n") {
		if strings.HasPrefix(para, " ") {
			b.WriteString(mdCode(para))
			continue
		}
		b.WriteString(mdEscape(para) + "\n\n")
	}
	return b.String()
}

// mdCode is a code block of s, as it is.
func mdCode(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + strings.TrimLeft(line, " ") + "\n")
	}
	return b.String() + "\n"
}

// mdEscape makes plain text literal in markdown.
func mdEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune("\\`*_[]<>#|!", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
