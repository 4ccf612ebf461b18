//! Architecture test: the walls between the workspace's crates, and between the files
//! inside each crate.
//!
//! 1. **No ring of files inside a crate.** A file may use files "below" it, never one
//!    that (directly or through others) uses it back: files in a ring can only be read,
//!    changed and tested together, and a ring is how a crate's layers quietly dissolve.
//!    The graph is read from the source text, not the compiler: `use` trees and inline
//!    paths starting with `crate`, `self`, `super` or a child module the file declares,
//!    each resolved to the deepest module file it names (a name a module re-exports
//!    with `pub use child::Name` resolves to the child's file). Comments, strings,
//!    `#[cfg(test)]` items and test-only files (`tests.rs`, `*_tests.rs`) are left out;
//!    a file using itself is no edge. (Paths inside a non-test inline `mod x { … }`
//!    are read as if they were the file's own, and block comments as not nested.)
//! 2. **Crate dependencies point one way.** Every workspace crate a member's
//!    `[dependencies]` name must be allowed by [`LAYERS`], which doubles as the map of
//!    the layering; `[dev-dependencies]` may add `testkit` and any crate below the
//!    member.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Each crate, and the workspace crates its `[dependencies]` may name: lowest layer
/// first, each naming only crates listed before it. A crate listed here that is not in
/// the workspace (yet) is fine; a workspace crate missing here, or a dependency its
/// line does not allow, fails.
const LAYERS: &[(&str, &str)] = &[
    // The wire protocol, the tenant catalog, local Postgres clusters.
    ("wire", ""),
    ("router", ""),
    ("localpg", ""),
    // Server connections and pools; the data plane (only the binary uses it).
    ("pooler", "wire router"),
    ("proxy", "wire router pooler"),
    // Where tenants' backends come from (pooler: its TLS connectors, so the control
    // plane's administrator connections check certificates as the pools do).
    ("provision", "wire router pooler localpg"),
    // The control plane: store, audit chain, jobs, supervisor, catalog sync.
    ("control", "router provision localpg"),
    // The HTTP admin API, over `control`; it reads the data plane's pools and catalog.
    ("admin-api", "router pooler control"),
    // Test helpers, only ever a dev-dependency (wire: the verifiers of roles it makes).
    ("testkit", "localpg wire"),
    // The binary puts everything together.
    (
        "sluice",
        "wire router localpg pooler proxy provision control admin-api",
    ),
];

fn allowed(krate: &str) -> Option<Vec<&'static str>> {
    let line = LAYERS.iter().find(|(k, _)| *k == krate)?;
    Some(line.1.split_whitespace().collect())
}

/// Every crate below `krate`: what its tests may also use (the drivers an admin-api
/// test provisions with, say), besides `testkit`.
fn below(krate: &str) -> BTreeSet<&'static str> {
    let mut found = BTreeSet::new();
    let mut todo = allowed(krate).unwrap_or_default();
    while let Some(dep) = todo.pop() {
        if found.insert(dep) {
            todo.extend(allowed(dep).unwrap_or_default());
        }
    }
    found
}

#[test]
fn the_layering_table_keeps_its_own_rules() {
    for (i, (krate, deps)) in LAYERS.iter().enumerate() {
        for dep in deps.split_whitespace() {
            let ok = LAYERS[..i].iter().any(|(k, _)| *k == dep) // a lower layer: no cycle
                && dep != "sluice" // nothing depends on the root package
                && dep != "testkit" // a dev-dependency only
                && (dep != "proxy" || *krate == "sluice"); // only the binary uses proxy
            assert!(ok, "LAYERS: {krate} must not depend on {dep}");
        }
    }
}

#[test]
fn crate_dependencies_follow_the_layering() {
    let members = members();
    let names: BTreeSet<&str> = members.iter().map(|(name, _)| name.as_str()).collect();
    let mut failures = Vec::new();
    for (name, dir) in &members {
        let Some(allowed) = allowed(name) else {
            failures.push(format!("{name}: not in LAYERS (add it)"));
            continue;
        };
        let manifest = read_toml(&dir.join("Cargo.toml"));
        for dep in deps(&manifest, "dependencies").filter(|dep| names.contains(dep)) {
            if !allowed.contains(&dep) {
                failures.push(format!("{name} -> {dep} ([dependencies]): not in LAYERS"));
            }
        }
        let below = below(name);
        for dep in deps(&manifest, "dev-dependencies").filter(|dep| names.contains(dep)) {
            if dep != "testkit" && !below.contains(dep) {
                failures.push(format!(
                    "{name} -> {dep} ([dev-dependencies]): neither testkit nor below {name}"
                ));
            }
        }
    }
    assert_none(failures, "crates out of their layer");
}

#[test]
fn no_ring_of_files_inside_a_crate() {
    let mut failures = Vec::new();
    for (name, dir) in members() {
        let graph = file_graph(&dir.join("src"));
        let rings = rings(&graph);
        for ring in rings {
            let mut text = format!("{name}: a ring of {} files:", ring.len());
            for (from, edges) in graph.iter().filter(|(from, _)| ring.contains(from)) {
                for (to, via) in edges.iter().filter(|(to, _)| ring.contains(to)) {
                    text += &format!("\n    {} -> {} ({via})", from.display(), to.display());
                }
            }
            failures.push(text);
        }
    }
    assert_none(failures, "rings of files");
}

#[test]
fn the_reader_sees_what_it_should() {
    let source = r##"
        //! crate::in_a_doc_comment
        mod child;
        pub use child::Exported;
        use crate::{a::{b::B, c}, d as e};
        use super::*;
        fn f() { let _ = "crate::in_a_string"; child::g(); crate::h::i(); x.child::<u8>(); }
        fn g<'a>(_: &'a str) { (r#"crate::"raw"#, "\"crate::x", '"', b'{', "\\"); }
        #[cfg(test)]
        mod tests { use crate::only_in_tests; }
    "##;
    let file = read_file(source);
    let refs: Vec<String> = file.refs.iter().map(|p| p.join("::")).collect();
    let want = "child::Exported crate::a::b::B crate::a::c crate::d super child::g crate::h::i";
    assert_eq!(refs.join(" "), want);
    assert_eq!(file.reexports["Exported"], "child");
}

fn assert_none(failures: Vec<String>, what: &str) {
    assert!(failures.is_empty(), "{what}:\n  {}", failures.join("\n  "));
}

// --- The workspace -------------------------------------------------------------------

fn read_toml(path: &Path) -> toml::Table {
    let text = fs::read_to_string(path).expect("a manifest");
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every workspace member, by package name, with its directory. The workspace root
/// is the directory above testkit.
fn members() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = &read_toml(&root.join("Cargo.toml"))["workspace"];
    let mut members = Vec::new();
    for member in workspace["members"].as_array().expect("members") {
        let dir = root.join(member.as_str().expect("a member path"));
        let package = &read_toml(&dir.join("Cargo.toml"))["package"];
        members.push((package["name"].as_str().expect("a name").to_owned(), dir));
    }
    members
}

/// The crates a manifest names in `section` (by package name, if renamed).
fn deps<'m>(manifest: &'m toml::Table, section: &str) -> impl Iterator<Item = &'m str> {
    let table = manifest.get(section).and_then(|t| t.as_table());
    let package = |spec: &'m toml::Value| spec.get("package").and_then(|p| p.as_str());
    let deps = table.into_iter().flatten();
    deps.map(move |(key, spec)| package(spec).unwrap_or(key))
}

// --- The file graph ------------------------------------------------------------------

/// file → the files it uses, each with the first path that showed it (paths relative
/// to the crate's `src/`).
type Graph = BTreeMap<PathBuf, BTreeMap<PathBuf, String>>;

/// A crate's module files by module path (`["a", "b"]` for `a/b.rs` or `a/b/mod.rs`).
type Files = BTreeMap<Vec<String>, File>;

/// One module file: where it is, its child modules (`mod x;`), the names it re-exports
/// from them (name → child), and the paths it uses.
#[derive(Default)]
struct File {
    path: PathBuf,
    children: BTreeSet<String>,
    reexports: BTreeMap<String, String>,
    refs: Vec<Vec<String>>,
}

fn file_graph(src: &Path) -> Graph {
    let mut files = Files::new();
    collect(src, src, &mut files);
    let mut graph = Graph::new();
    for (module, file) in &files {
        let edges = graph.entry(file.path.clone()).or_default();
        for used in &file.refs {
            if let Some(to) = resolve(module, file, used, &files).filter(|to| *to != file.path) {
                edges.entry(to).or_insert_with(|| used.join("::"));
            }
        }
    }
    graph
}

/// Reads every module file under `dir`: not `src/bin`, not test-only files.
fn collect(src: &Path, dir: &Path, files: &mut Files) {
    for entry in fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        let rel = path.strip_prefix(src).expect("under src").to_owned();
        let stem = path.file_stem().and_then(|s| s.to_str());
        let stem = stem.unwrap_or("").to_owned();
        if stem == "tests" || stem.ends_with("_tests") || rel == Path::new("bin") {
            continue;
        } else if path.is_dir() {
            collect(src, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let dirs = rel.parent().into_iter().flatten();
            let mut module: Vec<String> = dirs.map(|c| c.to_string_lossy().into()).collect();
            let root = module.is_empty() && (stem == "lib" || stem == "main");
            if !root && stem != "mod" {
                module.push(stem);
            }
            let file = read_file(&fs::read_to_string(&path).expect("a source file"));
            files.insert(module, File { path: rel, ..file });
        }
    }
}

/// The file that `path`, used in `file` (of module `module`), lands in; `None` for
/// another crate.
fn resolve(module: &[String], file: &File, path: &[String], files: &Files) -> Option<PathBuf> {
    let mut module = match path[0].as_str() {
        "crate" => vec![],
        "self" | "super" => module.to_vec(),
        child if file.children.contains(child) => module.to_vec(),
        _ => return None,
    };
    for segment in &path[usize::from(path[0] == "crate")..] {
        match segment.as_str() {
            "super" => drop(module.pop()),
            "self" => {}
            name => {
                module.push(name.to_owned());
                if files.contains_key(&module) {
                    continue;
                }
                module.pop();
                // Not a module: an item, perhaps one the module re-exports from a child.
                let child = files.get(&module).and_then(|f| f.reexports.get(name));
                module.extend(child.cloned());
                break;
            }
        }
    }
    files.get(&module).map(|f| f.path.clone())
}

/// The strongly connected components of more than one file: for each file, the files
/// it reaches that reach it back (the graphs are small).
fn rings(graph: &Graph) -> Vec<BTreeSet<&PathBuf>> {
    let reach = |from| {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![from]);
        while let Some(file) = todo.pop() {
            todo.extend(graph[file].keys().filter(|to| seen.insert(*to)));
        }
        seen
    };
    let reaches: BTreeMap<_, _> = graph.keys().map(|file| (file, reach(file))).collect();
    let mut rings = Vec::new();
    for (file, reached) in &reaches {
        let back = reached.iter().filter(|f| reaches[*f].contains(file));
        let ring: BTreeSet<&PathBuf> = back.copied().collect();
        if ring.len() > 1 && !rings.contains(&ring) {
            rings.push(ring);
        }
    }
    rings
}

// --- Reading a source file -----------------------------------------------------------

fn read_file(text: &str) -> File {
    let toks = without_test_items(tokens(text));
    let tok = |i: usize| toks.get(i).map(String::as_str).unwrap_or("");
    let declares = |i: &usize| tok(*i) == "mod" && tok(i + 2) == ";";
    let children = (0..toks.len()).filter(declares);
    let children = children.map(|i| tok(i + 1).into()).collect();
    let mut file = File {
        children,
        ..File::default()
    };
    let mut i = 0;
    while i < toks.len() {
        let (first, before) = (tok(i), tok(i.wrapping_sub(1)));
        if first == "use" {
            let mut uses = Vec::new();
            i = use_tree(&toks, i + 1, Vec::new(), &mut uses);
            for (path, name) in uses {
                let public = before == "pub" || before == ")"; // pub(crate) too
                if let (true, Some(name), [child, _, ..]) = (public, name, &path[..]) {
                    if file.children.contains(child) {
                        file.reexports.insert(name, child.clone());
                    }
                }
                file.refs.push(path);
            }
            continue;
        }
        let starts = ["crate", "self", "super"].contains(&first) || file.children.contains(first);
        if starts && tok(i + 1) == "::" && before != "::" && before != "." {
            let mut path = vec![first.to_owned()];
            while tok(i + 1) == "::" && tok(i + 2).starts_with(is_word) {
                path.push(tok(i + 2).to_owned());
                i += 2;
            }
            file.refs.push(path);
        }
        i += 1;
    }
    file
}

/// A path a `use` brings in, and the name it binds (none for a glob).
type Use = (Vec<String>, Option<String>);

/// Expands the `use` tree at `i` into full paths; returns where the tree ends.
fn use_tree(toks: &[String], mut i: usize, mut path: Vec<String>, out: &mut Vec<Use>) -> usize {
    let tok = |i: usize| toks.get(i).map(String::as_str).unwrap_or("");
    loop {
        match tok(i) {
            "::" => i += 1,
            "*" => return (out.push((path, None)), i + 1).1,
            "{" => {
                i += 1;
                while !["}", ""].contains(&tok(i)) {
                    i = use_tree(toks, i, path.clone(), out);
                    i += usize::from(tok(i) == ",");
                }
                return i + 1;
            }
            name if name.starts_with(is_word) => {
                // `a::{self, …}` is `a`.
                if name != "self" || path.is_empty() {
                    path.push(name.to_owned());
                }
                let renamed = tok(i + 1) == "as";
                if !renamed && tok(i + 1) == "::" {
                    i += 1;
                    continue;
                }
                let bound = [&path[path.len() - 1], tok(i + 2)][usize::from(renamed)];
                out.push((path.clone(), Some(bound.to_owned())));
                return i + if renamed { 3 } else { 1 };
            }
            _ => return i,
        }
    }
}

/// Drops every item marked `#[cfg(test)]`: up to its `;` or `,`, or its closing brace.
fn without_test_items(toks: Vec<String>) -> Vec<String> {
    const CFG_TEST: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let (mut out, mut i) = (Vec::with_capacity(toks.len()), 0);
    while i < toks.len() {
        if !toks[i..].iter().take(CFG_TEST.len()).eq(&CFG_TEST) {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        i += CFG_TEST.len();
        let mut depth = 0usize;
        while let Some(t) = toks.get(i).map(String::as_str) {
            match t {
                "(" | "[" | "{" => depth += 1,
                // The block around a marked statement or field ends: keep its brace.
                ")" | "]" | "}" if depth == 0 => break,
                ")" | "]" | "}" => depth -= 1,
                _ => {}
            }
            i += 1;
            if depth == 0 && [";", ",", "}"].contains(&t) {
                break;
            }
        }
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Words (identifiers, keywords, numbers), `::` and single punctuation; comments and
/// string and character literals are skipped.
fn tokens(text: &str) -> Vec<String> {
    let s: Vec<char> = text.chars().collect();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < s.len() {
        if let Some(end) = literal_end(&s, i) {
            i = end;
            continue;
        }
        let word = s[i..].iter().take_while(|c| is_word(**c)).count();
        let len = word.max(1) + usize::from(s[i..].starts_with(&[':', ':']));
        if !s[i].is_whitespace() {
            out.push(s[i..i + len].iter().collect());
        }
        i += len;
    }
    out
}

/// Where the comment, string or character literal starting at `i` ends, if one does
/// (a lifetime loses its quote and keeps its name).
fn literal_end(s: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| s.get(k).copied().unwrap_or(' ');
    let after = |from: usize, end: &dyn Fn(usize) -> bool| {
        (from..s.len()).find(|k| end(*k)).map_or(s.len(), |k| k + 1)
    };
    let raw = i + usize::from(at(i) == 'b') + 1; // after the `r` of r"…" or br"…"
    let hashes = (raw..s.len()).take_while(|k| s[*k] == '#').count();
    Some(match (at(i), at(i + 1)) {
        ('/', '/') => after(i, &|k| s[k] == '\n'),
        ('/', '*') => after(i + 2, &|k| s[k] == '*' && at(k + 1) == '/') + 1, // not nested
        ('r', _) | ('b', 'r') if at(raw - 1) == 'r' && at(raw + hashes) == '"' => {
            let closes = |k| s[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#');
            after(raw + hashes + 1, &closes) + hashes
        }
        ('"', _) => {
            let escaped = |k: usize| s[i..k].iter().rev().take_while(|c| **c == '\\').count() % 2;
            after(i + 1, &|k| s[k] == '"' && escaped(k) == 0)
        }
        ('\'', '\\') => after(i + 2, &|k| s[k] == '\''),
        ('\'', _) if at(i + 2) == '\'' => i + 3,
        ('\'', _) => i + 1, // a lifetime or a label
        _ => return None,
    })
}
