//! The core's shape, kept by a test: no import circle between its modules, and no module past about 500 lines of
//! code (its unit tests aside) except the mail-protocol clients. `docs/architecture.md` draws the rooms.
//!
//! A module is one file (`a/b.rs` or `a/b/mod.rs` is `a::b`). It depends on every module its `crate::` and
//! `super::` paths name, outside its unit tests and comments. A module and its own submodules count as one room:
//! a child using its parent's helpers, or a parent re-exporting its children, is not a circle.

#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MAX_CODE_LINES: usize = 500;
/// Protocol clients follow their RFCs' state machines; splitting them would scatter one conversation.
const LONG_ALLOWED: &[&str] = &["protocols::imap", "protocols::smtp"];

fn read_modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("readable src dir").map(|e| e.expect("dir entry").path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf-8 file name").to_owned();
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            read_modules(&path, &inner, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut segments = prefix.to_vec();
            if stem != "mod" && stem != "lib" {
                segments.push(stem.to_owned());
            }
            out.insert(segments.join("::"), std::fs::read_to_string(&path).expect("readable source"));
        }
    }
}

fn modules() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    read_modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &[], &mut out);
    out
}

/// The lines before the unit tests.
fn before_tests(source: &str) -> impl Iterator<Item = &str> {
    source.lines().take_while(|line| line.trim_end() != "#[cfg(test)]")
}

/// The code before the unit tests, without comments.
fn code_of(source: &str) -> String {
    before_tests(source).map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn lines_of_code(source: &str) -> usize {
    before_tests(source).count()
}

fn skip_spaces(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Parses a path (with `{…}` groups) starting at `i`, pushing every full path it names onto `out`.
fn parse_path(s: &[u8], mut i: usize, mut path: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    loop {
        i = skip_spaces(s, i);
        if i < s.len() && s[i] == b'{' {
            i += 1;
            loop {
                i = skip_spaces(s, i);
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
                let before = i;
                i = parse_path(s, i, path.clone(), out);
                i = skip_spaces(s, i);
                // Past a comma, or past a character no path starts with.
                if (i < s.len() && s[i] == b',') || i == before {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
            i += 1;
        }
        if i > start {
            path.push(String::from_utf8_lossy(&s[start..i]).into_owned());
        }
        if s.get(i..i + 2) == Some(b"::".as_slice()) {
            i += 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// The modules `module`'s code names.
fn dependencies(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent: Vec<String> = {
        let mut segments: Vec<String> = module.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
        segments.pop();
        segments
    };
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    for (anchor, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(found) = code[from..].find(anchor) {
            let at = from + found;
            let glued = at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':');
            if !glued {
                parse_path(bytes, at + anchor.len(), base.clone(), &mut paths);
            }
            from = at + anchor.len();
        }
    }
    let mut deps = BTreeSet::new();
    for path in paths {
        let longest = (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|candidate| known.contains(candidate));
        if let Some(dep) = longest {
            let related = dep == module || module.starts_with(&format!("{dep}::")) || dep.starts_with(&format!("{module}::"));
            if !related && !dep.is_empty() {
                deps.insert(dep);
            }
        }
    }
    deps
}

/// One import circle, if there is any.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(position) = stack.iter().position(|n| n == node) {
            let mut circle = stack[position..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, done, stack) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn graph_of(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules.iter().map(|(name, source)| (name.clone(), dependencies(name, &code_of(source), &known))).collect()
}

#[test]
fn no_module_of_the_core_imports_itself_through_others() {
    let modules = modules();
    assert!(modules.len() > 40, "the walk found the core's modules");
    let graph = graph_of(&modules);
    // The walk sees real dependencies: a flow uses the store and its own neighbours.
    assert!(graph["send::delivery"].contains("store::entities::outbound_message"), "{:?}", graph["send::delivery"]);
    assert!(graph["connect::grants::tokens"].contains("connect::grants::reauth"), "{:?}", graph["connect::grants::tokens"]);
    if let Some(circle) = find_circle(&graph) {
        panic!("import circle: {}", circle.join(" -> "));
    }
}

#[test]
fn the_circle_finder_finds_a_circle_through_groups_and_super() {
    let mut modules = BTreeMap::new();
    modules.insert("a::x".to_owned(), "use crate::{b::y::{self, Thing}, model};\n".to_owned());
    modules.insert("b::y".to_owned(), "fn f() { super::z::go() }\n".to_owned());
    modules.insert("b::z".to_owned(), "use crate::a::x::Other; // crate::model is a comment\n".to_owned());
    modules.insert("model".to_owned(), "#[cfg(test)]\nmod tests { use crate::a::x; }\n".to_owned());
    let graph = graph_of(&modules);
    assert_eq!(graph["a::x"], BTreeSet::from(["b::y".to_owned(), "model".to_owned()]));
    assert!(graph["model"].is_empty(), "unit tests do not count");
    assert_eq!(find_circle(&graph), Some(vec!["a::x".into(), "b::y".into(), "b::z".into(), "a::x".into()]));
}

#[test]
fn no_module_of_the_core_outgrows_a_short_read() {
    let too_long: Vec<String> = modules()
        .iter()
        .filter(|(name, _)| !LONG_ALLOWED.contains(&name.as_str()))
        .map(|(name, source)| (name, lines_of_code(source)))
        .filter(|(_, lines)| *lines > MAX_CODE_LINES)
        .map(|(name, lines)| format!("{name}: {lines} lines"))
        .collect();
    assert!(too_long.is_empty(), "split these by what they do: {too_long:?}");
}

#[test]
fn tenant_filters_are_written_only_by_the_store() {
    // Flows reach a tenant's rows through `store::tenant_owned` (`in_tenant`, `find_in_tenant` …), never by
    // spelling the filter, which one forgotten line would leave out.
    let by_hand: Vec<String> = modules()
        .iter()
        .filter(|(name, _)| !name.starts_with("store"))
        .filter(|(_, source)| code_of(source).contains("Column::TenantId.eq("))
        .map(|(name, _)| name.clone())
        .collect();
    assert!(by_hand.is_empty(), "filter through store::tenant_owned instead: {by_hand:?}");
}

/// Which modules may write each table in SQL of their own (sea-orm's typed queries aside). A table's writes sit
/// with the flow that owns its states, beside the claims that mark its rows dispatched (`jobs::scheduler`); the
/// lease columns every leased table shares are written by `jobs::leases`, which names its tables in an enum.
const SQL_WRITERS: &[(&str, &[&str])] = &[
    ("audit_log", &["observe::audit"]),
    (
        "email_accounts",
        &[
            "connect::confirm",
            "connect::mailbox",
            "jobs::marks",
            "jobs::scheduler",
            "receive::feed_health",
            "receive::idle",
            "receive::poll",
        ],
    ),
    ("event_watchers", &["observe::live_watchers"]),
    ("events", &["observe::events", "receive::inbox"]),
    (
        "grants",
        &["connect::grants::background", "connect::grants::lease", "connect::grants::tokens", "jobs::marks", "jobs::scheduler"],
    ),
    ("inbound_messages", &["receive::inbox"]),
    (
        "outbound_messages",
        &["jobs::marks", "jobs::scheduler", "send::delivery", "send::give_back", "send::outcome", "send::pace", "send::settle"],
    ),
    ("token_configs", &["connect::grants::client_secrets"]),
    ("webhook_attempts", &["observe::webhooks::attempt"]),
    ("webhook_deliveries", &["jobs::marks", "jobs::scheduler", "observe::webhooks::attempt", "observe::webhooks::log"]),
    ("webhook_endpoints", &["observe::webhooks::attempt", "observe::webhooks::endpoints"]),
    ("worker_processes", &["jobs::workers"]),
];

/// The tables a module's SQL writes (`UPDATE t`, `INSERT INTO t`, `DELETE FROM t`).
fn tables_written(code: &str) -> BTreeSet<String> {
    let mut tables = BTreeSet::new();
    for verb in ["UPDATE ", "INSERT INTO ", "DELETE FROM "] {
        for (at, _) in code.match_indices(verb) {
            let table: String = code[at + verb.len()..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !table.is_empty() {
                tables.insert(table);
            }
        }
    }
    tables
}

#[test]
fn each_table_is_written_in_sql_only_by_the_modules_that_own_it() {
    let owners: BTreeMap<&str, &[&str]> = SQL_WRITERS.iter().copied().collect();
    let mut strays = Vec::new();
    for (module, source) in modules() {
        for table in tables_written(&code_of(&source)) {
            match owners.get(table.as_str()) {
                Some(allowed) if allowed.contains(&module.as_str()) => {}
                _ => strays.push(format!("{module} writes {table}")),
            }
        }
    }
    assert!(strays.is_empty(), "move the statement to the table's owner, or name the new owner in SQL_WRITERS: {strays:?}");
    assert_eq!(tables_written("x(\"UPDATE grants SET a = 1\"); y(\"DELETE FROM events\")").len(), 2, "the scan sees writes");
}
