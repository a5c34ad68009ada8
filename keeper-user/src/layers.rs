//! The stage folders import only downwards: each top-level module names the modules it may
//! use, and this test reads the sources (outside their tests) and fails on any other
//! `crate::` import. Layers, lowest first: cpulist → policy → decide → device → sense, act,
//! simulate → enforcer → report → interface → daemon → cli.

use std::{collections::BTreeSet, fs, path::Path};

/// Each module and what it may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("cpulist", &[]),
    ("policy", &["cpulist"]),
    ("decide", &["cpulist", "policy"]),
    ("device", &["cpulist", "policy"]),
    ("sense", &["cpulist", "policy", "decide", "device"]),
    ("act", &["cpulist", "policy", "decide", "device"]),
    ("simulate", &["cpulist", "policy", "decide"]),
    (
        "enforcer",
        &["cpulist", "policy", "decide", "device", "sense", "act"],
    ),
    (
        "report",
        &[
            "cpulist", "policy", "decide", "device", "sense", "act", "enforcer",
        ],
    ),
    (
        "interface",
        &[
            "cpulist", "policy", "decide", "device", "sense", "act", "enforcer", "report",
        ],
    ),
    (
        "daemon",
        &[
            "cpulist",
            "policy",
            "decide",
            "device",
            "sense",
            "act",
            "enforcer",
            "report",
            "interface",
        ],
    ),
    (
        "cli",
        &[
            "cpulist",
            "policy",
            "decide",
            "device",
            "sense",
            "act",
            "simulate",
            "enforcer",
            "report",
            "interface",
            "daemon",
        ],
    ),
];

/// The top-level modules named after `crate::` in `text` (plain paths and `use crate::{…}`
/// trees alike).
fn imports(text: &str, modules: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(tree) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut word = String::new();
            for c in tree.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    found.insert(std::mem::take(&mut word));
                    break;
                }
                if depth == 1 && (c.is_alphanumeric() || c == '_') {
                    word.push(c);
                } else if !word.is_empty() {
                    if depth == 1 || c == ':' || c == '{' {
                        found.insert(std::mem::take(&mut word));
                    }
                    word.clear();
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found.retain(|m| modules.contains(m.as_str()));
    found
}

/// The code of a source file: its tests and its comments left out.
fn code(text: &str) -> String {
    let text = text.find("#[cfg(test)]").map_or(text, |i| &text[..i]);
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_upward_or_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_str().unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top);
        let Some((_, allowed)) = ALLOWED.iter().find(|(m, _)| *m == top) else {
            continue; // lib.rs, main.rs, bin/, this file
        };
        let text = fs::read_to_string(f).unwrap();
        for m in imports(&code(&text), &modules) {
            if m != top && !allowed.contains(&m.as_str()) {
                wrong.push(format!("{}: imports crate::{m}", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn the_import_reader_sees_use_trees() {
    let modules: BTreeSet<&str> = ["act", "decide", "device", "policy"].into();
    let text = "use crate::{\n    act::{self, x},\n    device::{a::B, c},\n};\nlet p = crate::policy::hive();";
    let found: Vec<_> = imports(text, &modules).into_iter().collect();
    assert_eq!(found, ["act", "device", "policy"]);
    let last = imports("use crate::{policy::Policy, decide};", &modules);
    assert_eq!(last.into_iter().collect::<Vec<_>>(), ["decide", "policy"]);
}
