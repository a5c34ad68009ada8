//! Bytes → [`RawPolicy`]: size cap, UTF-8 check, budgeted YAML parse, located parse errors.

use serde_saphyr::{DefaultMessageFormatter, Error as YamlError, MessageFormatter};

use super::at::Pos;
use super::diag::{Diagnostic, suggestion};
use super::raw::RawPolicy;

/// Largest policy file accepted; checked before parsing.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Reads at most `MAX_POLICY_BYTES + 1` bytes of a policy file, so that a huge file (or
/// `/dev/zero`) is refused by [`load`] without being read whole.
pub fn read_capped(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
/// Deepest nesting accepted (the policy itself needs 6).
pub const MAX_DEPTH: usize = 24;

/// Parse options that bound time and memory on hostile input.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_documents: 1,
            max_events: 200_000,
            max_nodes: 100_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_total_scalar_bytes: MAX_POLICY_BYTES,
            max_merge_keys: 100,
            flow_nesting_limit: MAX_DEPTH,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 20_000,
            max_replay_stack_depth: 8,
            max_alias_expansions_per_anchor: 200,
        },
        with_snippet: false,
        strict_booleans: true,
    }
}

/// Checks size and encoding, then parses. `Err` holds one located diagnostic.
pub fn parse_raw(bytes: &[u8]) -> Result<RawPolicy, Diagnostic> {
    let text = check_text(bytes)?;
    parse_yaml(text)
}

/// Refuses oversized and non-UTF-8 input before any parsing; points at the first bad byte.
pub fn check_text(bytes: &[u8]) -> Result<&str, Diagnostic> {
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(Diagnostic::error(
            Pos { line: 1, col: 1 },
            format!(
                "file is {} bytes; a policy is at most {MAX_POLICY_BYTES} bytes (refused before parsing)",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        // The prefix is valid UTF-8 by construction.
        let good = std::str::from_utf8(good).unwrap_or_default();
        let line = good.matches('\n').count() as u64 + 1;
        let col = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
        let byte = bytes.get(e.valid_up_to()).copied().unwrap_or(0);
        Diagnostic::error(
            Pos { line, col },
            format!("invalid UTF-8 (byte 0x{byte:02x}); a policy is UTF-8 text"),
        )
    })?;
    if let Some((i, c)) = text.char_indices().find(|(_, c)| *c == '\0') {
        let pos = pos_of_offset(text, i);
        return Err(Diagnostic::error(
            pos,
            format!("binary data ({c:?}); a policy is text"),
        ));
    }
    Ok(text)
}

fn pos_of_offset(text: &str, offset: usize) -> Pos {
    let before = text.get(..offset).unwrap_or_default();
    Pos {
        line: before.matches('\n').count() as u64 + 1,
        col: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1,
    }
}

/// Parses YAML text into any deserializable type with the hostile-input budget.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Diagnostic> {
    if text.trim().is_empty() {
        return Err(Diagnostic::error(
            Pos { line: 1, col: 1 },
            "the file is empty",
        ));
    }
    serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| yaml_diagnostic(&e, text))
}

fn yaml_diagnostic(err: &YamlError, text: &str) -> Diagnostic {
    let mut inner = err;
    while let YamlError::AliasError { error, .. } | YamlError::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let pos = err
        .location()
        .map(|l| Pos {
            line: l.line(),
            col: l.column(),
        })
        .unwrap_or(Pos { line: 1, col: 1 });
    let message = match inner {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => format!(
            "unknown key `{field}`{}; expected one of: {}",
            suggestion(field, expected.iter().copied()),
            expected.join(", ")
        ),
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let key = key_at(text, pos)
                .map(|k| format!("`{k}`: "))
                .unwrap_or_default();
            format!(
                "{key}unknown value `{variant}`{}; expected one of: {}",
                suggestion(variant, expected.iter().copied()),
                expected.join(", ")
            )
        }
        YamlError::SerdeMissingField { field, .. } => {
            let key = key_at(text, pos)
                .map(|k| format!(" in `{k}`"))
                .unwrap_or_default();
            format!("missing key `{field}`{key}")
        }
        YamlError::Budget { breach, .. } => {
            format!(
                "refused: the file exceeds the parser's safety budget ({breach:?}); aliases and nesting are limited"
            )
        }
        YamlError::AliasReplayLimitExceeded { .. }
        | YamlError::AliasExpansionLimitExceeded { .. }
        | YamlError::AliasReplayStackDepthExceeded { .. } => format!(
            "refused: too many alias expansions ({}); alias bombs are not accepted",
            DefaultMessageFormatter.format_message(inner)
        ),
        other => {
            let mut msg = DefaultMessageFormatter.format_message(other);
            if msg.contains("recursion limit") {
                msg = format!("refused: nesting deeper than {MAX_DEPTH} levels").into();
            }
            match key_at(text, pos) {
                Some(k) => format!("`{k}`: {msg}"),
                None => msg.into_owned(),
            }
        }
    };
    Diagnostic::error(pos, message)
}

/// The mapping key written on the line of `pos` before its column (`  rank: x` → `rank`).
fn key_at(text: &str, pos: Pos) -> Option<String> {
    let line = text.lines().nth(pos.line.checked_sub(1)? as usize)?;
    let before: String = line
        .chars()
        .take(pos.col.saturating_sub(1) as usize)
        .collect();
    let trimmed = before.trim_start().trim_start_matches("- ").trim_start();
    let key = trimmed.split(':').next()?.trim();
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    (ok && trimmed.contains(':')).then(|| key.to_string())
}
