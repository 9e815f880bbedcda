package main

// Shell completion. The scripts ask the binary itself: they run the
// command line typed so far with --generate-bash-completion appended (the
// flag of urfave/cli's completion, whose scripts these are), and p2pcat
// prints one candidate a line (printCompletions).

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/pipe"
)

const completionFlag = "--generate-bash-completion"

// completionShells are the shells `p2pcat completion` writes scripts for.
var completionShells = []string{"bash", "zsh", "fish"}

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print the shell completion script for bash, zsh or fish",
		ArgsUsage: "bash|zsh|fish",
		Description: `Writes the script to stdout. Install it with one of:

  p2pcat completion bash > /usr/share/bash-completion/completions/p2pcat  (or: source <(p2pcat completion bash) in ~/.bashrc)
  p2pcat completion zsh > "${fpath[1]}/_p2pcat"                           (then start a new shell)
  p2pcat completion fish > ~/.config/fish/completions/p2pcat.fish`,
		Action: runCompletion,
	}
}

func runCompletion(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("completion takes one argument, the shell: bash, zsh or fish")
	}
	var script string
	switch shell := c.Args().First(); shell {
	case "bash":
		script = bashCompletion
	case "zsh":
		script = zshCompletion
	case "fish":
		s, err := c.App.ToFishCompletion()
		if err != nil {
			return err
		}
		script = s
	default:
		return usagef("completion %q: p2pcat has completion scripts for bash, zsh and fish", shell)
	}
	_, err := io.WriteString(c.App.Writer, script)
	return err
}

// completing reports whether args ask for completion candidates.
func completing(args []string) bool {
	return len(args) > 1 && args[len(args)-1] == completionFlag
}

// printCompletions prints, one a line, the candidates for the word after
// args (as the scripts call: the words so far, the current word only when
// it starts with "-", then completionFlag). It reads the words itself:
// urfave/cli's completion parses them as a command line first, and with
// short-option handling it fails on an unfinished one (`--relay` and no
// value yet).
func printCompletions(app *cli.App, args []string) {
	app.Setup() // adds --help and --version
	words := args[1 : len(args)-1]
	top := newCompleter(app.VisibleFlags())
	var names []string
	for _, cmd := range app.VisibleCommands() {
		names = append(names, cmd.Names()...)
	}
	for i, w := range words {
		if cmd := app.Command(w); cmd != nil && !top.isFlag(w) && (i == 0 || !top.takesValue(words[i-1])) {
			var positional []string
			if cmd.Name == "completion" {
				positional = completionShells
			}
			flags := cmd.VisibleFlags()
			if !cmd.HideHelp && cmd.Command("help") == nil && !slices.Contains(flags, cli.HelpFlag) {
				flags = append(flags, cli.HelpFlag) // urfave/cli adds it when the command runs
			}
			newCompleter(flags).print(app.Writer, words[i+1:], positional)
			return
		}
	}
	top.print(app.Writer, words, names)
}

// completer knows the flags of one command.
type completer struct {
	flags  []cli.Flag
	byName map[string]cli.Flag
}

func newCompleter(flags []cli.Flag) completer {
	c := completer{flags: flags, byName: map[string]cli.Flag{}}
	for _, f := range flags {
		for _, n := range f.Names() {
			c.byName[n] = f
		}
	}
	return c
}

// flag is the flag that word names (-v, --find), or nil.
func (c completer) flag(word string) cli.Flag {
	name, ok := strings.CutPrefix(word, "-")
	if !ok {
		return nil
	}
	return c.byName[strings.TrimPrefix(name, "-")]
}

func (c completer) isFlag(word string) bool { return strings.HasPrefix(word, "-") }

// takesValue: word is a flag whose value is the next word.
func (c completer) takesValue(word string) bool {
	d, ok := c.flag(word).(cli.DocGenerationFlag)
	return ok && d.TakesValue()
}

// print prints the candidates after words: a flag's values after a flag
// that takes one (none when they are open-ended: the shell then offers
// file names), every flag when the word begins with "-", else the
// positional candidates while none has been given.
func (c completer) print(w io.Writer, words []string, positional []string) {
	last := ""
	if len(words) > 0 {
		last = words[len(words)-1]
	}
	switch {
	case c.takesValue(last):
		for _, v := range flagValues[c.flag(last).Names()[0]] {
			fmt.Fprintln(w, v)
		}
	case c.isFlag(last):
		for _, f := range c.flags {
			for _, n := range f.Names() {
				fmt.Fprintln(w, dashed(n))
			}
		}
	default:
		for i, word := range words {
			if !c.isFlag(word) && (i == 0 || !c.takesValue(words[i-1])) {
				return // the positional argument is there
			}
		}
		for _, p := range positional {
			fmt.Fprintln(w, p)
		}
	}
}

// flagValues are the values a flag can take, where they are few.
var flagValues = map[string][]string{
	"relay":      {string(pipe.RelayAuto), string(pipe.RelayNever), string(pipe.RelayOnly)},
	"log-format": {"text", "json"},
}

// dashed writes a flag's name as it is typed: -v, --verbose.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// bashCompletion is urfave/cli's autocomplete/bash_autocomplete adapted to
// p2pcat: no eval of the typed line (its words are passed as they are, so
// nothing in them runs at a Tab), no need for the bash-completion package
// (used when present, for words with = and :), and a space after a
// completed word.
const bashCompletion = `# bash completion for p2pcat (p2pcat completion bash)
_p2pcat() {
  local cur words cword
  if declare -F _init_completion >/dev/null 2>&1; then
    _init_completion -n "=:" || return
  else
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
    cur=${COMP_WORDS[COMP_CWORD]}
  fi
  local request=("${words[@]:0:cword}")
  request[0]=${request[0]/#\~/$HOME}
  if [[ $cur == -* ]]; then
    request+=("$cur")
  fi
  local IFS=$'\n'
  COMPREPLY=($(compgen -W "$("${request[@]}" ` + completionFlag + ` 2>/dev/null)" -- "$cur"))
}
complete -o bashdefault -o default -F _p2pcat p2pcat
`

// zshCompletion is urfave/cli's autocomplete/zsh_autocomplete for p2pcat,
// which also works as a file in $fpath.
const zshCompletion = `#compdef p2pcat
# zsh completion for p2pcat (p2pcat completion zsh)

_p2pcat() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} ` + completionFlag + ` 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ` + completionFlag + ` 2>/dev/null)}")
  fi

  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}

# Autoloaded from $fpath the file is the completion function; sourced, it
# registers it.
if [[ "${funcstack[1]}" == "_p2pcat" ]]; then
  _p2pcat "$@"
else
  compdef _p2pcat p2pcat
fi
`
