//! The architecture invariants of ARCHITECTURE.md that are about the import
//! graph: which module may name which. Checked by reading the sources, so a
//! cycle that comes back fails here before anyone has to draw the map again.

use std::path::{Path, PathBuf};

/// One boundary: no source file under `from` may name module `to`.
struct Boundary {
    /// A file or a folder (every `.rs` file below it), relative to the crate.
    from: &'static str,
    /// A module of the crate, by its last path segment.
    to: &'static str,
    /// Why, for the failure message.
    why: &'static str,
}

const BOUNDARIES: &[Boundary] = &[
    Boundary {
        from: "src/http",
        to: "cli",
        why: "http is a library the CLI drives: `serve` and its signals live in \
              src/cli/serve.rs and pass a plain http::ServerOptions",
    },
    Boundary {
        from: "src/credential.rs",
        to: "provider",
        why: "credential is plain data that provider reads; the provider enums \
              (ProviderKind, Encoding, ClientAuth) are defined in credential.rs \
              and re-exported by provider",
    },
    Boundary {
        from: "src/cli",
        to: "store",
        why: "the CLI reads and writes through Warden (src/warden.rs, src/admin.rs): \
              one door into the store, so the list/show code exists once",
    },
    Boundary {
        from: "src/http",
        to: "store",
        why: "the HTTP API reads and writes through Warden (src/warden.rs, src/admin.rs): \
              one door into the store, so the list/show code exists once",
    },
];

/// Whether `c` can be part of an identifier.
fn ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `line` names `module` as a path segment next to `::`: `cli::x`,
/// `crate::cli`, `super::cli`, `tokenwarden::cli::{…}` — in code, `use`
/// lines and doc links alike — or through an accessor named after it
/// (`warden.store()`), but not `client::`, a plain word or a method that
/// takes arguments (`flag.store(true, …)`).
fn names(line: &str, module: &str) -> bool {
    line.match_indices(module).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = &line[at + module.len()..];
        if before.is_some_and(ident) || after.chars().next().is_some_and(ident) {
            return false;
        }
        line[..at].ends_with("::")
            || after.starts_with("::")
            || (before == Some('.') && after.starts_with("()"))
    })
}

/// The `.rs` files at `path` (a file, or a folder searched recursively).
fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for entry in entries {
        let p = entry.unwrap().path();
        if p.is_dir() {
            files.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
    files
}

/// Every `file:line: text` under `from` that names `to`.
fn crossings(from: &str, to: &str) -> Vec<String> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = sources(&crate_dir.join(from));
    assert!(!files.is_empty(), "no sources at {from}: the rule is stale");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if names(line, to) {
                let shown = file.strip_prefix(crate_dir).unwrap_or(&file).display();
                found.push(format!("{shown}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    found
}

fn check(from: &str, to: &str) {
    let rule = BOUNDARIES
        .iter()
        .find(|b| b.from == from && b.to == to)
        .expect("a rule of BOUNDARIES");
    let found = crossings(rule.from, rule.to);
    assert!(
        found.is_empty(),
        "{} must not name `{}` ({}):\n{}",
        rule.from,
        rule.to,
        rule.why,
        found.join("\n")
    );
}

/// Architecture invariant: the HTTP API never names the CLI (no cycle
/// http → cli → http).
#[test]
fn http_never_names_the_cli() {
    check("src/http", "cli");
}

/// Architecture invariant: `credential` never names `provider` (no cycle
/// credential ↔ provider).
#[test]
fn credential_never_names_provider() {
    check("src/credential.rs", "provider");
}

/// Architecture invariant: one door into the store. Neither the CLI nor the
/// HTTP API names `store` (no `crate::store::…`, no `warden.store()`); both
/// go through `Warden` (src/warden.rs, src/admin.rs).
#[test]
fn cli_and_http_never_name_the_store() {
    check("src/cli", "store");
    check("src/http", "store");
}

/// The modules that hold a `Store`: the refresh protocol and `Warden` (with
/// its admin operations), and lib.rs's hidden `testing` re-export for the
/// integration tests. By path prefix, relative to the crate.
const STORE_HOLDERS: &[&str] = &[
    "src/store/",
    "src/refresh",
    "src/warden.rs",
    "src/admin.rs",
    "src/lib.rs",
];

/// Architecture invariant: the store has one door. No module but the
/// refresher and `Warden` names `store` — the facade, quota, sweep and view
/// take the row types from the crate root (`crate::HandleRow`, …), and a
/// new module that reaches for the store fails here.
#[test]
fn only_warden_and_the_refresher_name_the_store() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for file in sources(&crate_dir.join("src")) {
        let rel = file.strip_prefix(crate_dir).unwrap().display().to_string();
        if STORE_HOLDERS.iter().any(|h| rel.starts_with(h)) {
            continue;
        }
        found.extend(crossings(&rel, "store"));
    }
    assert!(
        found.is_empty(),
        "only {STORE_HOLDERS:?} may name `store`:\n{}",
        found.join("\n")
    );
}

/// Every rule has a test above, and the matcher sees each way of naming a
/// module (and nothing else), so a clean result means something.
#[test]
fn the_boundary_checks_see_every_spelling() {
    assert_eq!(BOUNDARIES.len(), 4, "give each new rule a test");
    for hit in [
        "use crate::cli::ServeArgs;",
        "use crate::cli;",
        "use super::super::cli::{Cli, run};",
        "    tokenwarden::cli::run(cli)",
        "/// See [`crate::cli::run_serve`].",
        "pub use crate::provider::{ClientAuth, Encoding};",
        "let k = provider::ProviderKind::Codex;",
        "let n = crate::store::encrypt_in_place(&cli.db, ms, &key)?;",
        "use crate::store::HandleRow;",
        "    let quotas = warden.store().latest_quotas()?;",
        "        .store()",
        "/// See [`store::Store::replace`].",
    ] {
        assert!(
            names(hit, "cli") || names(hit, "provider") || names(hit, "store"),
            "missed: {hit}"
        );
    }
    for miss in [
        "use crate::client::Agent;",
        "// the CLI builds a ServerOptions",
        "let cli = Cli::parse();",
        "pub provider: ProviderConfig,",
        "/// Overrides the provider's token endpoint.",
        "ProviderKind::Codex => \"codex\",",
        "mod cli_tests;",
        "shared.stopping.store(true, Ordering::SeqCst);",
        "headers.extend(header(\"Cache-Control\", \"no-store\"));",
        "// the store keeps the row",
        "let restore = restore::plan();",
        "fn store_path() -> PathBuf {",
    ] {
        assert!(
            !names(miss, "cli") && !names(miss, "provider") && !names(miss, "store"),
            "false hit: {miss}"
        );
    }
}
