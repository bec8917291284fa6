//! Every `authwatch ...` command shown in README.md and docs/*.md parses with the real
//! command line (`authwatch::cli::Cli`), so a renamed or removed flag cannot linger in the
//! documentation.
//!
//! The convention the documentation follows: fenced code blocks whose info string is `sh`,
//! `bash`, `console`, `shell` or empty are checked; `text` and every other language are not
//! (put synopses with `[...]` and program output there). In a checked block a command is a
//! line (joined over trailing `\` continuations, a ` # comment` stripped) whose first word,
//! after an optional `$ ` prompt and any `NAME=value` assignments, is `authwatch`, and each
//! part after `|`, `&&`, `||` or `;` that starts with `authwatch`.
//! `cargo run ... -p authwatch ... -- ARGS` counts as `authwatch ARGS`. Words are split like
//! a shell does (quotes, backslashes; `$(...)` and backticks stay one word, unexpanded);
//! redirections (`> file`, `2>&1`) are the shell's and not arguments.

use std::path::Path;

use authwatch::cli::Cli;
use clap::Parser as _;

/// Info strings of the fenced blocks whose commands are checked.
const CHECKED: &[&str] = &["", "sh", "bash", "console", "shell"];

/// One `authwatch` command found in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Example {
    /// 1-based line of the document where the command's line starts.
    line: usize,
    /// The words, the first being `authwatch`.
    args: Vec<String>,
}

/// A fence line: its indentation, character, length and info string (first word).
fn fence(line: &str) -> Option<(usize, char, usize, String)> {
    let body = line.trim_start_matches(' ');
    let indent = line.len() - body.len();
    let ch = body.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = body.chars().take_while(|c| *c == ch).count();
    if len < 3 {
        return None;
    }
    let info = body[len..].trim();
    if ch == '`' && info.contains('`') {
        return None;
    }
    let word = info.split_whitespace().next().unwrap_or("");
    Some((indent, ch, len, word.to_ascii_lowercase()))
}

/// The commands of every checked fenced block of a Markdown document.
fn extract(markdown: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        let Some((indent, ch, len, info)) = fence(line) else {
            continue;
        };
        let mut block: Vec<(usize, String)> = Vec::new();
        for (i, l) in lines.by_ref() {
            let closes = l.trim().len() >= len && l.trim().chars().all(|c| c == ch);
            if closes {
                break;
            }
            // The block's lines lose the fence's indentation (a block in a list item).
            let cut = l.len() - l.trim_start_matches(' ').len();
            block.push((i + 1, l[cut.min(indent)..].to_owned()));
        }
        if CHECKED.contains(&info.as_str()) {
            out.extend(commands_in_block(&block));
        }
    }
    out
}

/// The commands in the lines of one checked block (`(line number, text)`).
fn commands_in_block(block: &[(usize, String)]) -> Vec<Example> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in block {
        let text = strip_comment(raw).trim_end();
        let (start, mut joined) = pending.take().unwrap_or((*n, String::new()));
        let continued = text.ends_with('\\') && !text.ends_with("\\\\");
        joined.push_str(if continued {
            &text[..text.len() - 1]
        } else {
            text
        });
        if continued {
            joined.push(' ');
            pending = Some((start, joined));
        } else {
            out.extend(commands_in_line(start, &joined));
        }
    }
    if let Some((start, joined)) = pending {
        out.extend(commands_in_line(start, &joined));
    }
    out
}

/// `line` without a ` # comment`: a `#` at the start or after whitespace, outside quotes.
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if single {
            single = c != '\'';
        } else if c == '\\' {
            escaped = true;
        } else if double {
            double = c != '"';
        } else if c == '\'' {
            single = true;
        } else if c == '"' {
            double = true;
        } else if c == '#' && prev_blank {
            return &line[..i];
        }
        prev_blank = c.is_whitespace();
    }
    line
}

/// A piece of a shell line: a word, or an operator between commands.
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Op,
}

/// The end (exclusive) of the `$(...)` starting at `start` (the `$`).
fn substitution_end(c: &[char], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start + 1;
    while i < c.len() {
        match c[i] {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            '\\' => i += 1,
            '\'' => i = find(c, i + 1, '\''),
            '`' => i = find(c, i + 1, '`'),
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    } else if c[i] == '$' && c.get(i + 1) == Some(&'(') {
                        i = substitution_end(c, i) - 1;
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    c.len()
}

/// The index of the next `ch` from `from` (or the end).
fn find(c: &[char], from: usize, ch: char) -> usize {
    (from..c.len()).find(|&j| c[j] == ch).unwrap_or(c.len())
}

/// Skips a redirection operator at `i` (`>`, `>>`, `<`, `>&2`, `&>`) and its target.
fn skip_redirection(c: &[char], mut i: usize) -> usize {
    while i < c.len() && matches!(c[i], '>' | '<' | '&') {
        i += 1;
    }
    if c.get(i - 1) == Some(&'&') && c.get(i).is_some_and(|x| x.is_ascii_digit() || *x == '-') {
        return i + 1;
    }
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    let mut target = Vec::new();
    word(c, i, &mut target)
}

/// Splits a line into words and operators like a shell (no expansion).
fn tokenize(line: &str) -> Vec<Token> {
    let c: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            x if x.is_whitespace() => i += 1,
            '|' | ';' => {
                i += if matches!(c.get(i + 1), Some('|' | '&')) {
                    2
                } else {
                    1
                };
                out.push(Token::Op);
            }
            '&' if c.get(i + 1) == Some(&'>') => i = skip_redirection(&c, i),
            '&' => {
                i += if c.get(i + 1) == Some(&'&') { 2 } else { 1 };
                out.push(Token::Op);
            }
            '>' | '<' => i = skip_redirection(&c, i),
            _ => i = word(&c, i, &mut out),
        }
    }
    out
}

/// Reads the word at `i` onto `out`; returns where it ends.
fn word(c: &[char], mut i: usize, out: &mut Vec<Token>) -> usize {
    let mut w = String::new();
    let mut plain_digits = true;
    while i < c.len() {
        match c[i] {
            x if x.is_whitespace() || matches!(x, '|' | '&' | ';') => break,
            '>' | '<' if plain_digits && !w.is_empty() => return skip_redirection(c, i),
            '>' | '<' => break,
            '\\' => {
                w.extend(c.get(i + 1));
                i += 2;
                plain_digits = false;
                continue;
            }
            '\'' => {
                let end = find(c, i + 1, '\'');
                w.extend(&c[i + 1..end]);
                i = end + 1;
                plain_digits = false;
                continue;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' && matches!(c.get(i + 1), Some('$' | '`' | '"' | '\\')) {
                        w.push(c[i + 1]);
                        i += 2;
                    } else if c[i] == '$' && c.get(i + 1) == Some(&'(') {
                        let end = substitution_end(c, i);
                        w.extend(&c[i..end]);
                        i = end;
                    } else if c[i] == '`' {
                        let end = (find(c, i + 1, '`') + 1).min(c.len());
                        w.extend(&c[i..end]);
                        i = end;
                    } else {
                        w.push(c[i]);
                        i += 1;
                    }
                }
                i += 1;
                plain_digits = false;
                continue;
            }
            '$' if c.get(i + 1) == Some(&'(') => {
                let end = substitution_end(c, i);
                w.extend(&c[i..end]);
                i = end;
                plain_digits = false;
                continue;
            }
            '`' => {
                let end = (find(c, i + 1, '`') + 1).min(c.len());
                w.extend(&c[i..end]);
                i = end;
                plain_digits = false;
                continue;
            }
            x => {
                plain_digits &= x.is_ascii_digit();
                w.push(x);
            }
        }
        i += 1;
    }
    out.push(Token::Word(w));
    i
}

/// `NAME=value`, a variable assignment before a command.
fn is_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// `authwatch ARGS` for `cargo run ... -p authwatch ... -- ARGS`.
fn cargo_run(words: &[String]) -> Option<Vec<String>> {
    if words.first()? != "cargo" || words.get(1)? != "run" {
        return None;
    }
    let dashes = words.iter().position(|w| w == "--")?;
    let before = &words[2..dashes];
    let ours = before
        .windows(2)
        .any(|p| (p[0] == "-p" || p[0] == "--package") && p[1] == "authwatch")
        || before
            .iter()
            .any(|w| w == "-pauthwatch" || w == "--package=authwatch");
    ours.then(|| {
        std::iter::once("authwatch".to_owned())
            .chain(words[dashes + 1..].iter().cloned())
            .collect()
    })
}

/// The commands of one (joined) line that starts on line `n`.
fn commands_in_line(n: usize, line: &str) -> Vec<Example> {
    let line = line.trim_start();
    let line = line.strip_prefix("$ ").unwrap_or(line);
    let mut out = Vec::new();
    for segment in tokenize(line).split(|t| *t == Token::Op) {
        let words: Vec<String> = segment
            .iter()
            .filter_map(|t| match t {
                Token::Word(w) => Some(w.clone()),
                Token::Op => None,
            })
            .skip_while(|w| is_assignment(w))
            .collect();
        let args = if words.first().is_some_and(|w| w == "authwatch") {
            Some(words)
        } else {
            cargo_run(&words)
        };
        out.extend(args.map(|args| Example { line: n, args }));
    }
    out
}

#[test]
fn every_documented_command_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        let mut docs: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
    }
    let mut found = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let shown = file.strip_prefix(&root).unwrap_or(file).display();
        for ex in extract(&text) {
            found += 1;
            // Every command found, shown with `--nocapture`.
            eprintln!("{shown}:{}: {}", ex.line, ex.args.join(" "));
            match Cli::try_parse_from(&ex.args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayHelp
                            | clap::error::ErrorKind::DisplayVersion
                    ) => {}
                Err(e) => failures.push(format!(
                    "{shown}:{}: {}\n{}",
                    ex.line,
                    ex.args.join(" "),
                    e.to_string().trim_end()
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {found} documented command(s) do not parse (move synopses to ```text blocks):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        found >= 10,
        "only {found} `authwatch` command(s) found in README.md and docs/*.md: is the extractor broken?"
    );
}

#[cfg(test)]
mod extractor {
    use super::*;

    fn args(md: &str) -> Vec<(usize, String)> {
        extract(md)
            .into_iter()
            .map(|e| (e.line, e.args.join(" | ")))
            .collect()
    }

    #[test]
    fn a_continued_line_is_one_command_at_its_first_line() {
        let md = "intro\n```sh\nauthwatch run --cluster prod \\\n  --state-dir /var/lib/a \\\n  --cloudwatch-namespace A\n```\n";
        assert_eq!(
            args(md),
            [(
                3,
                "authwatch | run | --cluster | prod | --state-dir | /var/lib/a | --cloudwatch-namespace | A"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn a_comment_is_stripped_but_not_a_hash_inside_a_word_or_quotes() {
        let md = "```\nauthwatch demo   # prints 4 alerts\nauthwatch investigate a#b --key 'x=# y' # end\n# authwatch not-a-command\n```\n";
        assert_eq!(
            args(md),
            [
                (2, "authwatch | demo".to_owned()),
                (
                    3,
                    "authwatch | investigate | a#b | --key | x=# y".to_owned()
                )
            ]
        );
    }

    #[test]
    fn a_comment_ending_in_a_backslash_does_not_continue_the_line() {
        let md = "```bash\nauthwatch demo # see \\\nauthwatch rules check\n```\n";
        assert_eq!(
            args(md),
            [
                (2, "authwatch | demo".to_owned()),
                (3, "authwatch | rules | check".to_owned())
            ]
        );
    }

    #[test]
    fn every_part_of_a_pipe_or_list_that_is_authwatch() {
        let md = "```shell\ntail -F audit.log | authwatch top - && authwatch rules check; echo done || authwatch demo\nzcat x.gz | jq . > out\n```\n";
        assert_eq!(
            args(md),
            [
                (2, "authwatch | top | -".to_owned()),
                (2, "authwatch | rules | check".to_owned()),
                (2, "authwatch | demo".to_owned())
            ]
        );
    }

    #[test]
    fn text_and_other_languages_are_skipped() {
        let md = "```text\nauthwatch replay [--rules PATH]... PATH\n```\n```yaml\nauthwatch: x\n```\n~~~json\nauthwatch\n~~~\n```console\n$ authwatch demo\nauthwatch demo: replaying the bundled sample\n```\n";
        assert_eq!(
            args(md),
            [
                (11, "authwatch | demo".to_owned()),
                (
                    12,
                    "authwatch | demo: | replaying | the | bundled | sample".to_owned()
                )
            ]
        );
    }

    #[test]
    fn prompt_assignments_and_cargo_run() {
        let md = "```sh\n$ RUST_LOG=debug AWS_REGION=eu-west-1 authwatch run --cluster prod\ncargo run --release -p authwatch -- demo      # the sample\ncargo run -p authwatch-rules -- demo\ncargo test -p authwatch\nCI=true bash .ci/run\n```\n";
        assert_eq!(
            args(md),
            [
                (2, "authwatch | run | --cluster | prod".to_owned()),
                (3, "authwatch | demo".to_owned())
            ]
        );
    }

    #[test]
    fn quotes_escapes_and_substitutions_stay_one_word() {
        let md = r#"
   ```sh
   authwatch investigate fle.json --key "$(jq -r '.group | to_entries[0] | "\(.key)=\(.value)"' alert.json)" --html "my report.html"
   authwatch replay a\ b `ls *.gz` 2>/dev/null >>out.jsonl
   ```
"#;
        assert_eq!(
            extract(md),
            [
                Example {
                    line: 3,
                    args: [
                        "authwatch",
                        "investigate",
                        "fle.json",
                        "--key",
                        r#"$(jq -r '.group | to_entries[0] | "\(.key)=\(.value)"' alert.json)"#,
                        "--html",
                        "my report.html"
                    ]
                    .map(String::from)
                    .to_vec()
                },
                Example {
                    line: 4,
                    args: ["authwatch", "replay", "a b", "`ls *.gz`"]
                        .map(String::from)
                        .to_vec()
                }
            ]
        );
    }

    #[test]
    fn a_synopsis_in_a_checked_block_is_still_a_command() {
        // So that the main test reports it instead of silently passing.
        let md = "```\nauthwatch alarms sync --sns-topic-arn ARN [--rules DIR]\n```\n";
        let found = extract(md);
        assert_eq!(found.len(), 1);
        assert!(Cli::try_parse_from(&found[0].args).is_err());
    }
}
