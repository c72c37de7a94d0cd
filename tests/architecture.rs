//! The layers of ARCHITECTURE.md ("What each layer may not touch"), checked on the source.
//!
//! A layer is a top-level module: `src/<layer>/` or `src/<layer>.rs`. Every `.rs` file under
//! `src/` is read, comments and string literals are skipped, and every path that reaches
//! another layer is looked at: `crate::x::…` (in a `use` or inline, as in `crate::x::f(…)`,
//! and `crate::{x, …}` groups) and `super::…` paths that climb out of the layer
//! (`super::super::x`). Inline `mod name { … }` blocks are followed, so `super` inside them
//! resolves to the right module.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Which layers a layer may never import. A layer not listed here may import anything.
const RULES: &[Rule] = &[
    Rule {
        layer: "domain",
        never: &["http", "graphql"],
        because: "a domain service never knows which transport called it",
    },
    Rule {
        layer: "http",
        never: &["db"],
        because: "a transport asks the domain; it never reads a row itself",
    },
    Rule {
        layer: "hub",
        never: &["domain", "db", "http", "graphql"],
        because: "the hub's event types are the wire format between instances",
    },
    Rule {
        layer: "db",
        never: &["hub"],
        because: "storage publishes nothing; the domain publishes after the write commits",
    },
];

struct Rule {
    layer: &'static str,
    never: &'static [&'static str],
    because: &'static str,
}

/// One forbidden path found in the source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    line: usize,
    /// The path as written, e.g. `crate::db::user` or `super::super::db`.
    path: String,
    /// The layer it reaches.
    target: String,
}

#[test]
fn no_layer_imports_what_it_may_not() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(!files.is_empty(), "no .rs files under src/");

    let mut found = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(root)
            .expect("under the crate")
            .to_string_lossy()
            .replace('\\', "/");
        let source = fs::read_to_string(file).expect("read a source file");
        found.extend(check_source(&relative, &source));
    }

    let failures: Vec<String> = found
        .iter()
        .map(|v| {
            let layer = layer_of(&v.file).unwrap_or_default();
            let because = RULES
                .iter()
                .find(|r| r.layer == layer)
                .map_or("", |r| r.because);
            format!(
                "{}:{}: `{}`: {layer} may not import {} ({because})",
                v.file, v.line, v.path, v.target
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "forbidden imports between layers (ARCHITECTURE.md):\n{}",
        failures.join("\n")
    );
}

/// The checker itself: a forbidden import in a snippet is reported, in every form it takes,
/// and comments, strings and allowed imports are not.
#[test]
fn the_checker_reports_forbidden_imports_in_a_snippet() {
    let snippet = r#"
//! Mentions crate::db in a doc comment.
use crate::auth::Viewer;
use crate::db;
use crate::{config, hub::Topic};
use crate::{
    domain::Domain,
    db::user::{self, Model},
};
/* crate::db in a block comment */
// use crate::db::room;
async fn health(state: &State) -> bool {
    let url = "postgres://crate::db::nothing";
    crate::db::ping(&state.db).await // crate::db again
}
"#;
    let found = check_source("src/http/probe.rs", snippet);
    let lines: Vec<(usize, &str)> = found.iter().map(|v| (v.line, v.path.as_str())).collect();
    assert_eq!(
        lines,
        vec![
            (4, "crate::db"),
            (6, "crate::{domain::Domain, db::user::{self, Model}}"),
            (14, "crate::db::ping"),
        ],
        "{found:#?}"
    );

    // `super` climbing out of the layer, including from an inline module.
    let nested = "use super::super::db::user;\nuse super::follow;\nmod tests {\n    use super::super::super::hub::Topic;\n    use super::super::ws;\n}\n";
    let found = check_source("src/http/legacy/mod.rs", nested);
    let got: Vec<(usize, &str, &str)> = found
        .iter()
        .map(|v| (v.line, v.path.as_str(), v.target.as_str()))
        .collect();
    assert_eq!(got, vec![(1, "super::super::db::user", "db")], "{found:#?}");
    let found = check_source("src/db/mod.rs", nested);
    let got: Vec<(usize, &str)> = found.iter().map(|v| (v.line, v.target.as_str())).collect();
    assert_eq!(got, vec![(4, "hub")], "{found:#?}");

    // A layer reaching itself, or a file outside the layers, is never a violation.
    assert!(check_source("src/db/user.rs", "use crate::db::Model;").is_empty());
    assert!(check_source("src/lib.rs", "use crate::db; use crate::hub;").is_empty());
}

/// Every `.rs` file under `dir`, in a stable order.
/// The domain's modules form layers: no module reaches, through the others, back to itself
/// (`mod.rs`, which holds the `Domain` every service extends, is their common root and not
/// counted).
#[test]
fn the_domain_modules_import_each_other_without_circles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let modules: Vec<(String, String)> = files
        .iter()
        .filter_map(|f| {
            let name = f.file_stem()?.to_string_lossy().into_owned();
            (name != "mod" && f.parent() == Some(dir.as_path()))
                .then(|| Some((name, fs::read_to_string(f).ok()?)))
                .flatten()
        })
        .collect();
    let names: BTreeSet<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let graph: Vec<(String, BTreeSet<String>)> = modules
        .iter()
        .map(|(name, source)| (name.clone(), sibling_imports(source, &names, name)))
        .collect();
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "domain modules import each other in a circle: {}",
        cycles.join("; ")
    );
}

/// The checker of circles itself: a circle in a small graph is found, a layered one passes.
#[test]
fn the_circle_checker_finds_a_circle() {
    let edge = |from: &str, to: &[&str]| {
        (
            from.to_owned(),
            to.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>(),
        )
    };
    let layered = vec![edge("a", &["b"]), edge("b", &["c"]), edge("c", &[])];
    assert!(cycles(&layered).is_empty());
    let circled = vec![edge("a", &["b"]), edge("b", &["c"]), edge("c", &["a"])];
    assert_eq!(cycles(&circled), vec!["a → b → c → a".to_owned()]);
    let names: BTreeSet<String> = ["rooms", "messages"].map(str::to_owned).into();
    let source = "use super::{rooms::validate, Domain};\nfn f() { crate::domain::messages::x(); }";
    assert_eq!(
        sibling_imports(source, &names, "feeds"),
        names,
        "both forms of a sibling import are seen"
    );
}

/// The sibling modules `source` names: `super::x` (not climbing further) and
/// `crate::domain::x`, in paths and `{…}` groups.
fn sibling_imports(source: &str, names: &BTreeSet<String>, me: &str) -> BTreeSet<String> {
    let tokens = tokenize(source);
    let mut out = BTreeSet::new();
    for i in 0..tokens.len() {
        if after_path_sep(&tokens, i) || text(tokens.get(i + 1)) != "::" {
            continue;
        }
        let start = match tokens[i].text.as_str() {
            "super" if text(tokens.get(i + 2)) != "super" => i + 2,
            "crate" if text(tokens.get(i + 2)) == "domain" && text(tokens.get(i + 3)) == "::" => {
                i + 4
            }
            _ => continue,
        };
        for target in first_segments(&tokens, start) {
            if names.contains(&target) && target != me {
                out.insert(target);
            }
        }
    }
    out
}

/// Every circle in `graph`, each named once from its first member.
fn cycles(graph: &[(String, BTreeSet<String>)]) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &[(String, BTreeSet<String>)],
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(pos) = path.iter().position(|p| p == node) {
            let mut circle = path[pos..].to_vec();
            circle.push(node.to_owned());
            found.push(circle.join(" → "));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        if let Some((_, next)) = graph.iter().find(|(n, _)| n == node) {
            for n in next {
                visit(n, graph, path, done, found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for (node, _) in graph {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read a source directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a file belongs to: `src/http/ws.rs` → `http`, `src/metrics.rs` → `metrics`.
/// `src/lib.rs` and `src/main.rs` are the crate root, above the layers.
fn layer_of(file: &str) -> Option<String> {
    let rest = file.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The module path of a file below the crate root: `src/http/legacy/mod.rs` → `[http, legacy]`.
fn module_of(file: &str) -> Vec<String> {
    let rest = file.strip_prefix("src/").unwrap_or(file);
    let rest = rest.strip_suffix(".rs").unwrap_or(rest);
    let mut parts: Vec<String> = rest.split('/').map(str::to_owned).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The forbidden paths in one file's source, in order.
fn check_source(file: &str, source: &str) -> Vec<Violation> {
    let Some(layer) = layer_of(file) else {
        return Vec::new();
    };
    let Some(rule) = RULES.iter().find(|r| r.layer == layer) else {
        return Vec::new();
    };
    let tokens = tokenize(source);
    let file_module = module_of(file);
    let mut found = Vec::new();
    // Inline modules open at a brace depth: `(name, depth inside its braces)`.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        match t.text.as_str() {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if is_ident(tokens.get(i + 1)) && text(tokens.get(i + 2)) == "{" => {
                inline.push((tokens[i + 1].text.clone(), depth + 1));
            }
            "crate" | "super" if text(tokens.get(i + 1)) == "::" && !after_path_sep(&tokens, i) => {
                let (end, targets) = if t.text == "crate" {
                    let targets = first_segments(&tokens, i + 2);
                    (path_end(&tokens, i + 2), targets)
                } else {
                    // Climb: `super::super::…`, from the module this token is in.
                    let mut module = file_module.clone();
                    module.extend(inline.iter().map(|(name, _)| name.clone()));
                    let mut j = i;
                    while text(tokens.get(j)) == "super" && text(tokens.get(j + 1)) == "::" {
                        module.pop();
                        j += 2;
                    }
                    let targets = if module.is_empty() {
                        // At the crate root: the next segments name layers.
                        first_segments(&tokens, j)
                    } else {
                        // Still inside this file's layer (or another, if it climbed out of
                        // one and into another, which `super` cannot do without the root).
                        vec![module[0].clone()]
                    };
                    (path_end(&tokens, j), targets)
                };
                let path = render(&tokens[i..end]);
                for target in targets {
                    if rule.never.contains(&target.as_str()) {
                        found.push(Violation {
                            file: file.to_owned(),
                            line: t.line,
                            path: path.clone(),
                            target,
                        });
                    }
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Whether the token at `i` continues a path (`a::crate` is not a path start).
fn after_path_sep(tokens: &[Token], i: usize) -> bool {
    i > 0 && tokens[i - 1].text == "::"
}

/// The first segment of a path starting at `start`, or of each item of a `{…}` group there.
fn first_segments(tokens: &[Token], start: usize) -> Vec<String> {
    match tokens.get(start) {
        Some(t) if t.text == "{" => {
            let mut out = Vec::new();
            let mut depth = 0;
            let mut expect_item = true;
            for t in &tokens[start..] {
                match t.text.as_str() {
                    "{" => {
                        depth += 1;
                        continue;
                    }
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    "," if depth == 1 => {
                        expect_item = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && expect_item && t.is_ident {
                    out.push(t.text.clone());
                }
                expect_item = false;
            }
            out
        }
        Some(t) if t.is_ident => vec![t.text.clone()],
        _ => Vec::new(),
    }
}

/// Where a path that continues at `start` ends: identifiers, `::`, `*`, and `{…}` groups.
fn path_end(tokens: &[Token], start: usize) -> usize {
    let mut i = start;
    let mut depth = 0usize;
    while let Some(t) = tokens.get(i) {
        match t.text.as_str() {
            "{" => depth += 1,
            "}" if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            "::" | "*" => {}
            "," | "as" if depth > 0 => {}
            _ if t.is_ident => {}
            _ if depth > 0 => {}
            _ => return i,
        }
        i += 1;
    }
    i
}

/// A path's tokens as rustfmt writes them: `crate::db::{notification, user}`.
fn render(tokens: &[Token]) -> String {
    let mut out = String::new();
    for (k, t) in tokens.iter().enumerate() {
        if t.is_ident && k > 0 && tokens[k - 1].is_ident {
            out.push(' '); // `self as x`
        }
        out.push_str(&t.text);
        if t.text == "," {
            out.push(' ');
        }
    }
    out.replace(", }", "}")
}

#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
    is_ident: bool,
}

fn text(t: Option<&Token>) -> &str {
    t.map_or("", |t| t.text.as_str())
}

fn is_ident(t: Option<&Token>) -> bool {
    t.is_some_and(|t| t.is_ident)
}

/// Identifiers, `::` and single punctuation, with their line; comments, string and character
/// literals and numbers are dropped.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let n = chars.len();
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    while i < n {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut nesting = 0;
            while i < n {
                if chars[i] == '/' && at(i + 1) == '*' {
                    nesting += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    nesting -= 1;
                    i += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' || (matches!(c, 'r' | 'b') && raw_or_byte_string(&chars, i).is_some()) {
            // A string: "…", b"…", r"…", r#"…"#, br#"…"#.
            let (hashes, open) = if c == '"' {
                (None, i)
            } else {
                raw_or_byte_string(&chars, i).expect("checked")
            };
            i = open + 1;
            while i < n {
                let d = chars[i];
                if d == '\n' {
                    line += 1;
                }
                match hashes {
                    None if d == '\\' => i += 1,
                    None if d == '"' => break,
                    Some(h) if d == '"' && (1..=h).all(|k| at(i + k) == '#') => {
                        i += h;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 3; // the quote, the backslash and the escaped character
                while i < n && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < n && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            if !c.is_ascii_digit() {
                tokens.push(Token {
                    text: chars[start..i].iter().collect(),
                    line,
                    is_ident: true,
                });
            }
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token {
                text: "::".into(),
                line,
                is_ident: false,
            });
            i += 2;
        } else {
            tokens.push(Token {
                text: c.to_string(),
                line,
                is_ident: false,
            });
            i += 1;
        }
    }
    tokens
}

/// Whether a raw or byte string (`r"`, `r#"`, `b"`, `br#"`) starts at `i`: the number of `#`
/// of a raw string (`None` for a plain byte string) and the index of its opening quote.
fn raw_or_byte_string(chars: &[char], i: usize) -> Option<(Option<usize>, usize)> {
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None; // the `r` or `b` ends an identifier
    }
    let mut k = i;
    if chars.get(k) == Some(&'b') {
        k += 1;
    }
    if chars.get(k) == Some(&'r') {
        k += 1;
        let mut hashes = 0;
        while chars.get(k) == Some(&'#') {
            hashes += 1;
            k += 1;
        }
        return (chars.get(k) == Some(&'"')).then_some((Some(hashes), k));
    }
    (k > i && chars.get(k) == Some(&'"')).then_some((None, k))
}
