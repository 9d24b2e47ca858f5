//! The documented command line is the one the binary has: every subcommand that
//! `proxyguard --help` (and each `proxyguard COMMAND --help`) lists has its section in
//! docs/cli.md, and the README links that page.

use std::{path::PathBuf, process::Command};

use proxyguard_tests::proxyguard_bin;

fn repo_file(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The names under `Commands:` in `proxyguard WORDS... --help`, clap's `help` left out.
fn subcommands(words: &[&str]) -> Vec<String> {
    let out = Command::new(proxyguard_bin())
        .args(words)
        .arg("--help")
        .env_remove("PROXYGUARD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{words:?} --help: {}", out.status);
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_subcommand_in_help_is_in_docs_cli_md() {
    let page = repo_file("docs/cli.md");
    let top = subcommands(&[]);
    assert!(top.len() >= 10, "{top:?}");
    assert!(top.iter().any(|c| c == "completions"), "{top:?}");
    let mut missing = Vec::new();
    let mut checked = 0;
    for command in &top {
        let mut names = vec![command.clone()];
        names.extend(
            subcommands(&[command.as_str()])
                .into_iter()
                .map(|sub| format!("{command} {sub}")),
        );
        for name in names {
            checked += 1;
            if !page.contains(&format!("\n## `proxyguard {name}`\n")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/cli.md lacks {missing:?}: run `cargo xtask docs`"
    );
    assert!(checked > top.len(), "nested subcommands were found too");
}

#[test]
fn the_readme_links_the_command_reference() {
    let readme = repo_file("README.md");
    assert!(
        readme.contains("(docs/cli.md)"),
        "README.md does not link docs/cli.md"
    );
}

/// The rule the before-stop hook applies (shared/hooks/before-stop, step 2b): every top-level
/// subcommand of `proxyguard --help` appears in README.md as `proxyguard <name>`, since operators
/// look there first. Here it fails the test run, instead of only printing at the end of a session.
#[test]
fn every_subcommand_in_help_is_shown_in_the_readme() {
    let readme = repo_file("README.md");
    let top = subcommands(&[]);
    assert!(top.len() >= 10, "{top:?}");
    let missing: Vec<&String> = top
        .iter()
        .filter(|name| !readme.contains(&format!("proxyguard {name}")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md never shows these subcommands: {missing:?}"
    );
}
