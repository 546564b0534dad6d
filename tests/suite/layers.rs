//! The library's modules form layers, and an import only ever goes down: from `src/` it reads
//! every `crate::<module>` path (in `use` lines and inline, outside comments, `#[cfg(test)]`
//! code and `tests.rs` files), and fails on an import into the same or a higher layer unless
//! [`EXCEPTIONS`] lists it with its reason. With every edge going strictly down there can be no
//! loop between modules except through a listed exception. A new top-level module must be given
//! a layer here.
//!
//! The layers are drawn in `docs/architecture.md`; keep the two alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `src/` and its layer: a module may import only from lower layers.
const LAYERS: &[(&str, u8)] = &[
    // The command line: one file per verb.
    ("cli", 9),
    // What the verbs run: the daemon's loop, the checks, the benchmark.
    ("bench", 8),
    ("daemon", 8),
    ("doctor", 8),
    // One job from payload to teardown: the pipeline of stages.
    ("job", 7),
    // GitLab's wire protocol (API client, trace upload, wire types).
    ("gitlab", 6),
    // Job environments: the dind sidecar, the shared socket, the warm pool.
    ("isolation", 5),
    // Sweeping leftovers (start-up reaper and `runner cleanup`), the job log, counters.
    ("cleanup", 4),
    ("metrics", 4),
    ("trace", 4),
    // The job cache archive and the firewall rules of a job network.
    ("cache", 3),
    ("netpolicy", 3),
    // The config file and the job's directories (opened beneath, no symlinks).
    ("config", 2),
    ("paths", 2),
    // Leaves: the Docker API, certificates, secrets, the words for a job's end, URL escapes.
    ("docker", 1),
    ("outcome", 1),
    ("percent", 1),
    ("pki", 1),
    ("secret", 1),
];

/// Imports that go up or sideways today, each with why it stays for now. An entry whose import
/// is gone fails the test too, so this list only shrinks.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a file of `src/` belongs to (`isolation/dind.rs` → `isolation`,
/// `outcome.rs` → `outcome`); `None` for `lib.rs` and `main.rs`, the crate's roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The modules `crate::<name>` paths in `text` name, with a line where each appears. Stops at
/// the first `#[cfg(test)]`: tests may reach for whatever they check against.
fn imports(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" // ").next().unwrap_or(code);
        for (at, _) in code.match_indices("crate::") {
            // `isolated_runner::crate::` never occurs; `$crate::` in macros names this crate too.
            let rest = &code[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.entry(name).or_insert(n + 1);
            }
        }
    }
    out
}

/// Root items of `lib.rs` (`crate::install_crypto_provider`): below every module.
fn root_items(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix("pub fn ")
                .or_else(|| l.strip_prefix("pub async fn "))?;
            Some(rest.split(['(', '<']).next()?.trim().to_string())
        })
        .collect()
}

#[test]
fn imports_only_go_down_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs");
    let roots = root_items(&lib);
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut problems = Vec::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.expect("walk src/");
        // `tests.rs` files are unit-test modules (`#[cfg(test)] mod tests;`), like the
        // `#[cfg(test)]` code the reader skips inside a file.
        if entry.path().extension().is_none_or(|e| e != "rs") || entry.file_name() == "tests.rs" {
            continue;
        }
        let rel = entry.path().strip_prefix(&src).expect("below src/");
        let Some(from) = module_of(rel) else {
            continue;
        };
        if layer_of(&from).is_none() {
            problems.push(format!(
                "src/{}: module `{from}` has no layer: add it to LAYERS in tests/suite/layers.rs \
                 and to the drawing in docs/architecture.md",
                rel.display()
            ));
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read a source file");
        for (to, line) in imports(&text) {
            if to == from || roots.contains(&to) {
                continue;
            }
            edges
                .entry((from.clone(), to))
                .or_insert_with(|| format!("src/{}:{line}", rel.display()));
        }
    }
    for ((from, to), at) in &edges {
        let Some(to_layer) = layer_of(to) else {
            problems.push(format!("{at}: `crate::{to}` is not a module with a layer"));
            continue;
        };
        let from_layer = layer_of(from).expect("checked above");
        let excepted = EXCEPTIONS.iter().any(|(f, t, _)| f == from && t == to);
        if to_layer >= from_layer && !excepted {
            problems.push(format!(
                "{at}: {from} (layer {from_layer}) imports {to} (layer {to_layer}), which is not \
                 below it: move the name down, or list the import in EXCEPTIONS with its reason"
            ));
        }
    }
    for (from, to, _) in EXCEPTIONS {
        if !edges.contains_key(&(from.to_string(), to.to_string())) {
            problems.push(format!(
                "EXCEPTIONS lists {from} -> {to}, which no longer occurs: remove the entry"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_imports_but_not_comments_or_tests() {
    let text = "use crate::docker::Docker;\n\
                // crate::job is only mentioned\n\
                let x = crate::paths::job_paths(b); // crate::cli too\n\
                #[cfg(test)]\n\
                mod tests { use crate::cli; }\n";
    let found: Vec<String> = imports(text).into_keys().collect();
    assert_eq!(found, ["docker", "paths"]);
}
