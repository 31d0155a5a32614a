//! Splits an SSH `exec` command line the way POSIX `sh` splits a simple command, and flags
//! everything beyond one, so that Cedar's `Ssh::Action::"exec"` can allowlist commands
//! without being fooled by `uptime; rm -rf /`.
//!
//! The host runs the string as `$SHELL -c COMMAND` for the login user, so what matters is
//! what a shell would make of it. The model is POSIX `sh` (dash, bash): single quotes,
//! double quotes with their four backslash escapes, backslash outside quotes, and blanks
//! between words. Nothing is expanded: no variables, globs, tildes or aliases. Anything a
//! shell would treat as more than a simple command sets `uses_shell_syntax`, and so does
//! anything other common login shells read specially (zsh's `=cmd`, `^`; fish's and csh's
//! backslash letters, `!`), or that a person reviewing the command could misread
//! (control characters, invisible or non-ASCII blank characters). When in doubt the flag
//! is set: a false alarm only refuses a command, a miss runs one.
//!
//! String-level rules are an allowlist tool. A policy that permits exact commands without
//! shell syntax is sound; a policy that tries to blocklist dangerous commands is not
//! (`sh -c`, `python3 -c`, `find -exec` and `xargs` run anything as plain words).

use std::iter::Peekable;
use std::str::Chars;

use serde_json::{Value, json};

/// An `exec` command as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCommand {
    /// The command line exactly as the client sent it.
    pub command: String,
    /// The words after quote removal. When `uses_shell_syntax` is set this is best effort
    /// and must not be trusted: operators are tokens of their own, substitutions are kept
    /// raw, a comment is dropped, an unterminated quote runs to the end.
    pub argv: Vec<String>,
    /// The first word as written, empty when there is none. Deliberately not stripped to
    /// its basename: `/tmp/x/uptime` is whatever program someone put there, and must not
    /// match an allowlist entry meant for `uptime`.
    pub argv0: String,
    /// True when the command is anything beyond one simple command with literal words:
    /// operators, redirections, substitutions, expansions, globs, comments, assignments,
    /// reserved words, unterminated quotes, control or invisible characters.
    pub uses_shell_syntax: bool,
}

/// Walks the command once, building words and noting shell syntax.
struct Splitter<'a> {
    chars: Peekable<Chars<'a>>,
    words: Vec<String>,
    word: String,
    /// A word has begun, even if it will be empty (`""`).
    in_word: bool,
    /// Some part of the current word was quoted or escaped.
    quoted: bool,
    syntax: bool,
}

/// Words that mean grammar, not a command, when they come first unquoted (POSIX, plus
/// bash's and zsh's extras).
const RESERVED_WORDS: &[&str] = &[
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then", "until", "while",
    "[[", "]]", "function", "select", "time", "coproc", "foreach", "repeat",
];

/// Splits `command` into words and decides whether it uses shell syntax. Never fails:
/// a command that cannot be split cleanly is flagged and its `argv` is best effort.
pub fn parse(command: &str) -> ParsedCommand {
    let misleading = command.chars().any(is_misleading);
    let (argv, syntax) = Splitter::new(command).run();
    ParsedCommand {
        command: command.to_owned(),
        argv0: argv.first().cloned().unwrap_or_default(),
        argv,
        uses_shell_syntax: syntax || misleading,
    }
}

/// Like [`parse`] for the raw bytes of an SSH `exec` request. Bytes that are not UTF-8
/// are replaced (U+FFFD) in `command` and `argv`, and the command is flagged: the host
/// would run different bytes from the ones policy saw.
pub fn parse_bytes(command: &[u8]) -> ParsedCommand {
    match std::str::from_utf8(command) {
        Ok(text) => parse(text),
        Err(_) => {
            let mut parsed = parse(&String::from_utf8_lossy(command));
            parsed.uses_shell_syntax = true;
            parsed
        }
    }
}

impl ParsedCommand {
    /// The context of Cedar's `Ssh::Action::"exec"`: `command`, `argv0`, `argv` (a set)
    /// and `uses_shell_syntax`. The gateway core adds `owner`.
    pub fn cedar_context(&self) -> Value {
        json!({
            "command": self.command,
            "argv0": self.argv0,
            "argv": self.argv,
            "uses_shell_syntax": self.uses_shell_syntax,
        })
    }
}

impl<'a> Splitter<'a> {
    fn new(command: &'a str) -> Self {
        Self {
            chars: command.chars().peekable(),
            words: Vec::new(),
            word: String::new(),
            in_word: false,
            quoted: false,
            syntax: false,
        }
    }

    fn run(mut self) -> (Vec<String>, bool) {
        while let Some(c) = self.chars.next() {
            match c {
                ' ' | '\t' => self.end_word(),
                '\n' => {
                    self.syntax = true;
                    self.end_word();
                }
                '\'' => self.single_quoted(),
                '"' => self.double_quoted(),
                '\\' => self.escaped(),
                '#' if !self.in_word => {
                    self.syntax = true;
                    self.comment();
                }
                '$' => {
                    self.syntax = true;
                    self.dollar();
                }
                '`' => {
                    self.syntax = true;
                    self.backticks();
                }
                ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                    self.syntax = true;
                    self.operator(c);
                }
                '=' => {
                    // In the first word it makes an assignment (`FOO=bar cmd`); at the start
                    // of any word zsh expands `=cmd` to a path. Elsewhere (`if=/dev/zero`,
                    // `--format=json`) it is literal.
                    if self.words.is_empty() || !self.in_word {
                        self.syntax = true;
                    }
                    self.push(c);
                }
                c if is_plain(c) => self.push(c),
                c => {
                    self.syntax = true;
                    self.push(c);
                }
            }
        }
        self.end_word();
        (self.words, self.syntax)
    }

    fn push(&mut self, c: char) {
        self.in_word = true;
        self.word.push(c);
    }

    fn begin_quoted(&mut self) {
        self.in_word = true;
        self.quoted = true;
    }

    fn end_word(&mut self) {
        if !self.in_word {
            return;
        }
        let word = std::mem::take(&mut self.word);
        if self.words.is_empty() && !self.quoted && RESERVED_WORDS.contains(&word.as_str()) {
            self.syntax = true;
        }
        self.words.push(word);
        self.in_word = false;
        self.quoted = false;
    }

    fn single_quoted(&mut self) {
        self.begin_quoted();
        loop {
            match self.chars.next() {
                Some('\'') => return,
                Some(c) => self.word.push(c),
                None => {
                    self.syntax = true;
                    return;
                }
            }
        }
    }

    fn double_quoted(&mut self) {
        self.begin_quoted();
        loop {
            match self.chars.next() {
                Some('"') => return,
                Some('\\') => match self.chars.peek().copied() {
                    Some(c @ ('$' | '`' | '"' | '\\')) => {
                        self.chars.next();
                        self.word.push(c);
                    }
                    Some('\n') => {
                        // A line continuation: removed by the shell, but a newline all the same.
                        self.chars.next();
                        self.syntax = true;
                    }
                    _ => self.word.push('\\'),
                },
                Some('$') => {
                    self.syntax = true;
                    self.dollar();
                }
                Some('`') => {
                    self.syntax = true;
                    self.backticks();
                }
                Some('!') => {
                    // History expansion in interactive bash and in csh, even inside quotes.
                    self.syntax = true;
                    self.word.push('!');
                }
                Some(c) => self.word.push(c),
                None => {
                    self.syntax = true;
                    return;
                }
            }
        }
    }

    fn escaped(&mut self) {
        match self.chars.next() {
            // A line continuation joins the lines without starting a word.
            Some('\n') => self.syntax = true,
            Some(c) => {
                // `\n` is `n` to sh but a newline to fish, and `\x41` means `A` there.
                if c.is_ascii_alphanumeric() {
                    self.syntax = true;
                }
                self.begin_quoted();
                self.word.push(c);
            }
            None => {
                self.syntax = true;
                self.push('\\');
            }
        }
    }

    /// The rest of the line after an unquoted `#` that starts a word.
    fn comment(&mut self) {
        while self.chars.next_if(|&c| c != '\n').is_some() {}
    }

    /// `$(...)`, `$((...))` and `${...}` are kept raw in one word; `$NAME` needs nothing
    /// more, its name is ordinary characters.
    fn dollar(&mut self) {
        self.push('$');
        match self.chars.peek().copied() {
            Some(open @ '(') => self.raw_balanced(open, ')'),
            Some(open @ '{') => self.raw_balanced(open, '}'),
            _ => {}
        }
    }

    fn raw_balanced(&mut self, open: char, close: char) {
        let mut depth = 0usize;
        for c in self.chars.by_ref() {
            self.word.push(c);
            if c == open {
                depth += 1;
            } else if c == close {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return;
                }
            }
        }
        self.syntax = true;
    }

    fn backticks(&mut self) {
        self.push('`');
        while let Some(c) = self.chars.next() {
            self.word.push(c);
            match c {
                '`' => return,
                '\\' => {
                    if let Some(next) = self.chars.next() {
                        self.word.push(next);
                    }
                }
                _ => {}
            }
        }
        self.syntax = true;
    }

    /// Operators are tokens of their own; a run of `;&|<>` is one token (`&&`, `>>`, `<<`).
    fn operator(&mut self, first: char) {
        self.end_word();
        let mut token = String::from(first);
        if !matches!(first, '(' | ')') {
            while let Some(c) = self.chars.next_if(|c| matches!(c, ';' | '&' | '|' | '<' | '>')) {
                token.push(c);
            }
        }
        self.words.push(token);
    }
}

/// Unquoted characters that are literal in every common shell.
fn is_plain(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ',' | ':' | '@' | '%' | '+')
}

/// Characters that a person reading the command in a log or an approval request could
/// not see or could misread, quoted or not: control characters (NUL, CR, ESC, ...) other
/// than tab, blanks other than space and tab, and invisible or direction-changing marks.
fn is_misleading(c: char) -> bool {
    (c.is_control() && c != '\t')
        || (c.is_whitespace() && c != ' ' && c != '\t')
        || matches!(
            c,
            '\u{00AD}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

#[cfg(test)]
mod tests;
